"""A shard folder on this machine's filesystem: positioned reads on cached handles."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from msa_dist.common import atomic
from msa_dist.common.errors import MsaDistError
from msa_dist.common.limits import MAX_MANIFEST_BYTES, read_input
from msa_dist.data.stores.base import MissingFile, ShardStore

_OPEN_LOCK = threading.Lock()


class LocalStore(ShardStore):
    """A folder on this machine's filesystem: reads are positioned reads (pread) on cached handles."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.root = Path(path)
        self.location = str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        try:
            # a regular file only, read with a cap: a FIFO named manifest.json must not block
            return self._count(read_input(self._path(name), limit))
        except FileNotFoundError:
            raise MissingFile(f"{self._path(name)} does not exist") from None
        except OSError as exc:
            raise MsaDistError(f"cannot read {self._path(name)}: {exc.strerror or exc}") from None

    def read_range(self, name: str, start: int, end: int) -> bytes:
        handles = self.__dict__.setdefault("_local", {})
        fd = handles.get(name)
        if fd is None:
            with _OPEN_LOCK:  # reader threads: one handle per file
                fd = handles.get(name)
                if fd is None:
                    try:
                        fd = handles[name] = os.open(self._path(name), os.O_RDONLY)
                    except FileNotFoundError:
                        raise MsaDistError(f"shard {self._path(name)} does not exist") from None
        data = os.pread(fd, end - start, start)
        if len(data) != end - start:
            raise OSError(f"{self._path(name)}: read {len(data)} of {end - start} bytes at {start} (file truncated?)")
        return self._count(data)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def write(self, name: str, data: bytes) -> None:
        atomic.write_atomic(self._path(name), data)

    def __del__(self):
        for fd in self.__dict__.get("_local", {}).values():
            os.close(fd)
