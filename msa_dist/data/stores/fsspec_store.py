"""Shards on any fsspec filesystem (`gs://`, `memory://`, ...): `cat_file(path, start, end)`."""

from __future__ import annotations

from msa_dist.common.errors import MsaDistError
from msa_dist.common.limits import MAX_MANIFEST_BYTES
from msa_dist.common.urls import redact_url
from msa_dist.data.stores.base import MissingFile, ShardStore


class FsspecStore(ShardStore):
    """Any fsspec filesystem (`s3://`, `gs://`, `memory://`...): `cat_file(path, start, end)`."""

    def __init__(self, url: str):
        super().__init__()
        self._root = url.rstrip("/")
        self.location = redact_url(self._root)
        self._protocol = url.split("://", 1)[0]
        self._fs_handle()  # fail now, in one line, when the backend is not installed

    def _fs_handle(self):
        if self.__dict__.get("_fs") is None:
            import fsspec

            try:
                self._fs = fsspec.filesystem(self._protocol)
            except (ImportError, ValueError) as exc:
                raise MsaDistError(f"cannot open {self.location}: {exc} (for s3:// install `msa-dist[s3]`)") from None
        return self._fs

    def _path(self, name: str) -> str:
        return f"{self._root}/{name}"

    def read(self, name: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        try:
            with self._fs_handle().open(self._path(name), "rb") as f:
                data = f.read(limit + 1)  # bounded, whatever the file holds
        except FileNotFoundError:
            raise MissingFile(f"{self.url(name)} does not exist") from None
        if len(data) > limit:
            raise MsaDistError(f"{self.url(name)}: more than the {limit} bytes allowed")
        return self._count(data)

    def read_range(self, name: str, start: int, end: int) -> bytes:
        data = self._fs_handle().cat_file(self._path(name), start=start, end=end)
        if len(data) != end - start:
            raise OSError(f"{self.url(name)}: read {len(data)} of {end - start} bytes at {start}")
        return self._count(data)

    def exists(self, name: str) -> bool:
        return self._fs_handle().exists(self._path(name))

    def write(self, name: str, data: bytes) -> None:
        self._fs_handle().pipe_file(self._path(name), data)
