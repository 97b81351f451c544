"""The shard store's interface, shared by every kind of store (local, HTTP, fsspec, S3).

Apart from `__init__.py`, which picks the store for a URL (and imports `s3.py` for `s3://` only
then), so that each store module subclasses it without importing the others.
"""

from __future__ import annotations

import multiprocessing

from msa_dist.common.errors import MsaDistError
from msa_dist.common.limits import MAX_MANIFEST_BYTES


class MissingFile(MsaDistError):
    """The store answered that the file does not exist (as opposed to: cannot tell, denied, unreachable)."""


def is_url(location: str) -> bool:
    """True for `scheme://...` locations other than a Windows drive letter."""
    return "://" in str(location)


class ShardStore:
    """A shard set's folder; names are relative to it (e.g. `train-000000.tar`)."""

    location: str

    def __init__(self):
        self._bytes = multiprocessing.Value("q", 0, lock=True)
        self._requests = multiprocessing.Value("q", 0, lock=False)  # guarded by _bytes's lock

    @property
    def bytes_read(self) -> int:
        """Bytes returned so far by this store, in this process and its loader workers."""
        return self._bytes.value

    @property
    def requests(self) -> int:
        """Reads (requests, for a remote store) answered so far, in this process and its loader workers."""
        return self._requests.value

    def _count(self, data: bytes) -> bytes:
        with self._bytes.get_lock():
            self._bytes.value += len(data)
            self._requests.value += 1
        return data

    def read(self, name: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """A whole file (the manifest, an index; a tar for `shards index`); MsaDistError if it holds
        more than `limit` bytes, of which no more than that are read."""
        raise NotImplementedError

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file, in one request."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def check_ranges(self, name: str) -> None:
        """Fail now, in one line, if this store cannot serve byte ranges of `name` (an existing file)."""

    def write(self, name: str, data: bytes) -> None:
        raise MsaDistError(
            f"cannot write {name} to {self.location}: this store is read-only "
            "(index a local copy, or an fsspec URL you can write to)"
        )

    def url(self, name: str) -> str:
        """Where `name` is, for messages."""
        return f"{self.location.rstrip('/')}/{name}"

    def __getstate__(self):
        # Loader workers get a copy: open connections and file handles are per process.
        state = dict(self.__dict__)
        for key in ("_local", "_fs"):
            state.pop(key, None)
        return state
