"""Shards behind a web server that honours Range requests (`http(s)://`), with credentials."""

from __future__ import annotations

import base64
import http.client
import os
import threading
import time
import urllib.parse

from msa_dist.common.errors import MsaDistError
from msa_dist.common.urls import redact_text, redact_url, split_credentials
from msa_dist.data.stores.base import MissingFile, ShardStore

_HTTP_TIMEOUT_S = 60


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
            time.sleep(0.2 * 2**attempt)  # backing off a throttling or restarting server
        if status in (401, 403):
            raise MsaDistError(
                f"{self.url(name)}: HTTP {status} (access denied): give credentials in the URL "
                "(https://USER:PASSWORD@host/...), in MSA_DIST_HTTP_USER / MSA_DIST_HTTP_PASSWORD "
                "or MSA_DIST_HTTP_TOKEN, or a signed URL's query"
            )
        return status, body

    def read(self, name: str) -> bytes:
        status, body = self._get(name, {})
        if status != 200:
            raise (MissingFile if status in (404, 410) else MsaDistError)(f"{self.url(name)}: HTTP {status}")
        return self._count(body)

    def read_range(self, name: str, start: int, end: int) -> bytes:
        status, body = self._get(name, {"Range": f"bytes={start}-{end - 1}"})
        if status == 200:
            raise MsaDistError(
                f"{self.url(name)}: the server ignores Range requests (answered 200 with the whole "
                "file); serve the shards with one that honours them, e.g. `msa-dist shards serve`"
            )
        if status != 206 or len(body) != end - start:
            raise OSError(f"{self.url(name)}: HTTP {status}, {len(body)} of {end - start} bytes at {start}")
        return self._count(body)

    def exists(self, name: str) -> bool:
        status, _ = self._get(name, {"Range": "bytes=0-0"})
        return status in (200, 206)

    def check_ranges(self, name: str) -> None:
        self.read_range(name, 0, 1)


def _auth_headers(user: str | None, password: str | None) -> dict:
    """Basic auth from the URL's userinfo, else from the environment; else a bearer token; else none."""
    if user is None:
        user, password = os.environ.get("MSA_DIST_HTTP_USER"), os.environ.get("MSA_DIST_HTTP_PASSWORD")
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    bearer = os.environ.get("MSA_DIST_HTTP_TOKEN")
    return {"Authorization": f"Bearer {bearer}"} if bearer else {}
