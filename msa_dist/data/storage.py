"""Where a shard set lives: a local folder, `file://`, `http(s)://` (Range requests) or any fsspec URL.

The loader never streams a whole shard: it asks a store for byte ranges (`read_range`), so each
reader fetches only its own samples. A store counts the bytes it returns (`bytes_read`, shared
with the loader's worker processes) so that `bench data` can report bytes per sample.
"""
from __future__ import annotations

import base64
import http.client
import os
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Optional

from msa_dist.data.urls import REDACTED, redact_text, redact_url, split_credentials
from msa_dist.data.limits import read_input
from msa_dist.data.store_base import MissingFile, ShardStore, is_url  # noqa: F401 (re-exported)
from msa_dist.errors import MsaDistError

_HTTP_TIMEOUT_S = 60
_MAX_WHOLE_FILE_BYTES = 1 << 32  # a manifest or an index: far above any real one
_OPEN_LOCK = threading.Lock()


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
            # a regular file only, read with a cap: a FIFO named manifest.json must not block
            return self._count(read_input(self._path(name), _MAX_WHOLE_FILE_BYTES))
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
        path = self._path(name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def __del__(self):
        for fd in self.__dict__.get("_local", {}).values():
            os.close(fd)


class HttpStore(ShardStore):
    """Shards behind a web server that honours Range requests; one kept-alive connection per thread.

    The base URL's query (a SAS-style token: `?sv=...&sig=...`) is sent with every file's request;
    basic auth comes from the URL (`https://user:pass@host/...`) or, when it has none, from
    MSA_DIST_HTTP_USER / MSA_DIST_HTTP_PASSWORD; MSA_DIST_HTTP_TOKEN sends `Authorization: Bearer`.
    """

    RETRIES = 4  # attempts for a 429 / 5xx answer (throttling, a restarting server), with backoff

    def __init__(self, url: str):
        super().__init__()
        clean, user, password = split_credentials(url)
        parts = urllib.parse.urlsplit(clean)
        self._scheme, self._netloc, self._base = parts.scheme, parts.netloc, parts.path.rstrip("/")
        self._query = parts.query
        self.location = redact_url(url)
        self._headers = _auth_headers(user, password)

    def _full(self, name: str) -> str:
        """The request target of `name`: its path and the base URL's query."""
        path = f"{self._base}/{urllib.parse.quote(name)}"
        return f"{path}?{self._query}" if self._query else path

    def url(self, name: str) -> str:
        return redact_url(f"{self._scheme}://{self._netloc}{self._full(name)}")

    def _connection(self) -> http.client.HTTPConnection:
        local = self.__dict__.setdefault("_local", threading.local())
        # a forked loader worker must not share its parent's socket
        if getattr(local, "conn", None) is None or local.pid != os.getpid():
            local.pid = os.getpid()
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            local.conn = cls(self._netloc, timeout=_HTTP_TIMEOUT_S)
        return local.conn

    def _once(self, name: str, headers: dict) -> tuple[int, bytes]:
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            conn = self._connection()
            try:
                conn.request("GET", self._full(name), headers={**self._headers, **headers})
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError) as exc:
                conn.close()
                self._local.conn = None
                if attempt:
                    raise MsaDistError(f"{self.url(name)}: {redact_text(repr(exc))}") from None
            except OSError as exc:
                conn.close()
                self._local.conn = None
                raise MsaDistError(f"{self.url(name)}: {redact_text(str(exc))}") from None
        raise AssertionError("unreachable")

    def _get(self, name: str, headers: dict) -> tuple[int, bytes]:
        for attempt in range(self.RETRIES):
            status, body = self._once(name, headers)
            if status not in (429, 500, 502, 503, 504) or attempt == self.RETRIES - 1:
                break
            time.sleep(0.2 * 2 ** attempt)  # backing off a throttling or restarting server
        if status in (401, 403):
            raise MsaDistError(f"{self.url(name)}: HTTP {status} (access denied): give credentials in the URL "
                               "(https://USER:PASSWORD@host/...), in MSA_DIST_HTTP_USER / MSA_DIST_HTTP_PASSWORD "
                               "or MSA_DIST_HTTP_TOKEN, or a signed URL's query")
        return status, body

    def read(self, name: str) -> bytes:
        status, body = self._get(name, {})
        if status != 200:
            raise (MissingFile if status in (404, 410) else MsaDistError)(f"{self.url(name)}: HTTP {status}")
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


def _auth_headers(user: Optional[str], password: Optional[str]) -> dict:
    """Basic auth from the URL's userinfo, else from the environment; else a bearer token; else none."""
    if user is None:
        user, password = os.environ.get("MSA_DIST_HTTP_USER"), os.environ.get("MSA_DIST_HTTP_PASSWORD")
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    bearer = os.environ.get("MSA_DIST_HTTP_TOKEN")
    return {"Authorization": f"Bearer {bearer}"} if bearer else {}


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

    def read(self, name: str) -> bytes:
        try:
            return self._count(self._fs_handle().cat_file(self._path(name)))
        except FileNotFoundError:
            raise MissingFile(f"{self.url(name)} does not exist") from None

    def read_range(self, name: str, start: int, end: int) -> bytes:
        data = self._fs_handle().cat_file(self._path(name), start=start, end=end)
        if len(data) != end - start:
            raise OSError(f"{self.url(name)}: read {len(data)} of {end - start} bytes at {start}")
        return self._count(data)

    def exists(self, name: str) -> bool:
        return self._fs_handle().exists(self._path(name))

    def write(self, name: str, data: bytes) -> None:
        self._fs_handle().pipe_file(self._path(name), data)


def open_store(location: str | Path) -> ShardStore:
    """The store for a shard location: a folder, `file://...`, `http(s)://...` or an fsspec URL."""
    location = str(location)
    if not is_url(location):
        return LocalStore(location)
    if REDACTED in location:
        raise MsaDistError(f"{location}: this URL's secrets were redacted when it was written down; give the "
                           "shard URL again (e.g. --shards URL or data.shards=URL)")
    scheme = location.split("://", 1)[0].lower()
    if scheme == "file":
        return LocalStore(urllib.parse.unquote(urllib.parse.urlsplit(location).path))
    if scheme in ("http", "https"):
        return HttpStore(location)
    if scheme == "s3":
        from msa_dist.data.s3 import S3Store
        return S3Store(location)
    return FsspecStore(location)
