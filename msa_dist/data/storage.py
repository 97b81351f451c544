"""Where a shard set lives: a local folder, `file://`, `http(s)://` (Range requests) or any fsspec URL.

The loader never streams a whole shard: it asks a store for byte ranges (`read_range`), so each
reader fetches only its own samples. A store counts the bytes it returns (`bytes_read`, shared
with the loader's worker processes) so that `bench data` can report bytes per sample.
"""
from __future__ import annotations

import http.client
import multiprocessing
import os
import threading
import urllib.parse
from pathlib import Path

from msa_dist.errors import MsaDistError

_HTTP_TIMEOUT_S = 60


def is_url(location: str) -> bool:
    """True for `scheme://...` locations other than a Windows drive letter."""
    return "://" in str(location)


class ShardStore:
    """A shard set's folder; names are relative to it (e.g. `train-000000.tar`)."""

    location: str

    def __init__(self):
        self._bytes = multiprocessing.Value("q", 0, lock=True)

    @property
    def bytes_read(self) -> int:
        """Bytes returned so far by this store, in this process and its loader workers."""
        return self._bytes.value

    def _count(self, data: bytes) -> bytes:
        with self._bytes.get_lock():
            self._bytes.value += len(data)
        return data

    def read(self, name: str) -> bytes:
        """A whole (small) file: the manifest, an index."""
        raise NotImplementedError

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file, in one request."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def check_ranges(self, name: str) -> None:
        """Fail now, in one line, if this store cannot serve byte ranges of `name` (an existing file)."""

    def write(self, name: str, data: bytes) -> None:
        raise MsaDistError(f"cannot write {name} to {self.location}: this store is read-only "
                           "(index a local copy, or an fsspec URL you can write to)")

    def url(self, name: str) -> str:
        """Where `name` is, for messages."""
        return f"{self.location.rstrip('/')}/{name}"

    def __getstate__(self):
        # Loader workers get a copy: open connections and file handles are per process.
        state = dict(self.__dict__)
        for key in ("_local", "_fs"):
            state.pop(key, None)
        return state


class LocalStore(ShardStore):
    """A folder on this machine's filesystem: reads are positioned reads (pread) on cached handles."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.root = Path(path)
        self.location = str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> bytes:
        try:
            return self._count(self._path(name).read_bytes())
        except FileNotFoundError:
            raise MsaDistError(f"{self._path(name)} does not exist") from None

    def read_range(self, name: str, start: int, end: int) -> bytes:
        handles = self.__dict__.setdefault("_local", {})
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
        path = self._path(name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def __del__(self):
        for fd in self.__dict__.get("_local", {}).values():
            os.close(fd)


class HttpStore(ShardStore):
    """Shards behind a web server that honours Range requests; one kept-alive connection per thread."""

    def __init__(self, url: str):
        super().__init__()
        self.location = url.rstrip("/")
        parts = urllib.parse.urlsplit(self.location)
        self._scheme, self._netloc, self._base = parts.scheme, parts.netloc, parts.path

    def _connection(self) -> http.client.HTTPConnection:
        local = self.__dict__.setdefault("_local", threading.local())
        # a forked loader worker must not share its parent's socket
        if getattr(local, "conn", None) is None or local.pid != os.getpid():
            local.pid = os.getpid()
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            local.conn = cls(self._netloc, timeout=_HTTP_TIMEOUT_S)
        return local.conn

    def _get(self, name: str, headers: dict) -> tuple[int, bytes]:
        path = f"{self._base}/{urllib.parse.quote(name)}"
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            conn = self._connection()
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError) as exc:
                conn.close()
                self._local.conn = None
                if attempt:
                    raise MsaDistError(f"{self.url(name)}: {exc!r}") from None
            except OSError as exc:
                conn.close()
                self._local.conn = None
                raise MsaDistError(f"{self.url(name)}: {exc}") from None
        raise AssertionError("unreachable")

    def read(self, name: str) -> bytes:
        status, body = self._get(name, {})
        if status != 200:
            raise MsaDistError(f"{self.url(name)}: HTTP {status}")
        return self._count(body)

    def read_range(self, name: str, start: int, end: int) -> bytes:
        status, body = self._get(name, {"Range": f"bytes={start}-{end - 1}"})
        if status == 200:
            raise MsaDistError(f"{self.url(name)}: the server ignores Range requests (answered 200 with the whole "
                               "file); serve the shards with one that honours them, e.g. `msa-dist shards serve`")
        if status != 206 or len(body) != end - start:
            raise OSError(f"{self.url(name)}: HTTP {status}, {len(body)} of {end - start} bytes at {start}")
        return self._count(body)

    def exists(self, name: str) -> bool:
        status, _ = self._get(name, {"Range": "bytes=0-0"})
        return status in (200, 206)

    def check_ranges(self, name: str) -> None:
        self.read_range(name, 0, 1)


class FsspecStore(ShardStore):
    """Any fsspec filesystem (`s3://`, `gs://`, `memory://`...): `cat_file(path, start, end)`."""

    def __init__(self, url: str):
        super().__init__()
        self.location = url.rstrip("/")
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

    def read(self, name: str) -> bytes:
        try:
            return self._count(self._fs_handle().cat_file(self.url(name)))
        except FileNotFoundError:
            raise MsaDistError(f"{self.url(name)} does not exist") from None

    def read_range(self, name: str, start: int, end: int) -> bytes:
        data = self._fs_handle().cat_file(self.url(name), start=start, end=end)
        if len(data) != end - start:
            raise OSError(f"{self.url(name)}: read {len(data)} of {end - start} bytes at {start}")
        return self._count(data)

    def exists(self, name: str) -> bool:
        return self._fs_handle().exists(self.url(name))

    def write(self, name: str, data: bytes) -> None:
        self._fs_handle().pipe_file(self.url(name), data)


def open_store(location: str | Path) -> ShardStore:
    """The store for a shard location: a folder, `file://...`, `http(s)://...` or an fsspec URL."""
    location = str(location)
    if not is_url(location):
        return LocalStore(location)
    scheme = location.split("://", 1)[0].lower()
    if scheme == "file":
        return LocalStore(urllib.parse.unquote(urllib.parse.urlsplit(location).path))
    if scheme in ("http", "https"):
        return HttpStore(location)
    return FsspecStore(location)
