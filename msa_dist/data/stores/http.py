"""Shards behind a web server that honours Range requests (`http(s)://`), with credentials.

The server is not trusted (docs/security.md): a body is read in bounded pieces, never past the
range asked for or a whole file's cap; a 206 must say (Content-Range) that it holds the bytes asked
for; every read has an overall deadline (DEADLINE_S, its attempts included) besides a timeout per
socket read (READ_TIMEOUT_S), so a server that trickles cannot hold a reader thread. A timeout, a
body cut short, a dropped connection and a 429 / 5xx are retried (RETRIES attempts, with backoff)
while the deadline allows; a range that still fails is an OSError, which the loader counts and skips.
"""

from __future__ import annotations

import base64
import http.client
import math
import os
import re
import threading
import time
import urllib.parse
import warnings
from functools import partial

from msa_dist.common.errors import MsaDistError
from msa_dist.common.limits import MAX_MANIFEST_BYTES
from msa_dist.common.urls import redact_text, redact_url, split_credentials
from msa_dist.data.stores.base import MissingFile, ShardStore
from msa_dist.data.stores.deadline import buffered

_RETRIED_STATUS = (429, 500, 502, 503, 504)  # throttling, a restarting server
_CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19}|\*)$")
_ENV_CREDENTIALS = ("MSA_DIST_HTTP_USER", "MSA_DIST_HTTP_PASSWORD", "MSA_DIST_HTTP_TOKEN")
_WARNED: set[str] = set()  # hosts already told that the environment's credentials are not sent to them


class _Transient(OSError):
    """A timeout, a body cut short, a dropped connection: another attempt may succeed."""


class _BadAnswer(OSError):
    """An answer another attempt would not mend: more bytes than asked, other bytes than asked."""


class _Response(http.client.HTTPResponse):
    """A response whose reads stop at its connection's deadline (deadline.py)."""

    def __init__(self, sock, *args, owner, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # the plain reader made above: reads go through the deadline instead
        self.fp, raw = buffered(sock, owner.read_timeout_s)
        raw.deadline = owner.deadline


def _with_deadline(base: type) -> type:
    class Connection(base):
        deadline, read_timeout_s = math.inf, 60.0  # set before each request

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.response_class = partial(_Response, owner=self)

    return Connection


_HTTP, _HTTPS = _with_deadline(http.client.HTTPConnection), _with_deadline(http.client.HTTPSConnection)


class HttpStore(ShardStore):
    """Shards behind a web server that honours Range requests; one kept-alive connection per thread.

    The base URL's query (a SAS-style token: `?sv=...&sig=...`) is sent with every file's request;
    basic auth comes from the URL (`https://user:pass@host/...`), sent to that host. Credentials
    from the environment (MSA_DIST_HTTP_USER / MSA_DIST_HTTP_PASSWORD, or MSA_DIST_HTTP_TOKEN as
    `Authorization: Bearer`) go only to the hosts MSA_DIST_HTTP_HOST names: a shard URL can come
    from someone else's config.yaml.
    """

    RETRIES = 4  # attempts for a timeout, a short body, a dropped connection, a 429 / 5xx answer
    READ_TIMEOUT_S = 60.0  # a connect or one socket read
    DEADLINE_S = 300.0  # one read, all its attempts: the longest a server can hold a reader thread

    def __init__(self, url: str):
        super().__init__()
        try:
            clean, user, password = split_credentials(url)
            parts = urllib.parse.urlsplit(clean)
        except ValueError as exc:  # our own words: nothing of the URL in them
            raise MsaDistError(f"{redact_url(url)}: {exc}") from None
        try:
            parts.port  # noqa: B018 (urlsplit checks the port when asked)
        except ValueError:  # its message would quote the port, maybe a piece of a password
            raise MsaDistError(
                f"{redact_url(url)}: the port is not a number (a password with an unencoded '/', '?' or "
                "'#'? percent-encode them: %2F, %3F, %23)"
            ) from None
        self._scheme, self._netloc, self._base = parts.scheme, parts.netloc, parts.path.rstrip("/")
        self._query = parts.query
        self.location = redact_url(url)
        self._headers = _auth_headers(user, password, parts)

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
            local.pid, local.used = os.getpid(), False
            local.conn = (_HTTPS if self._scheme == "https" else _HTTP)(self._netloc, timeout=self.READ_TIMEOUT_S)
        return local.conn

    def _drop(self) -> None:
        """Close this thread's connection (an error, or an answer left unread): the next request opens one."""
        self._local.conn.close()
        self._local.conn = None

    def _once(self, name: str, headers: dict, deadline: float, ok: tuple, most: int, span=None) -> tuple[int, bytes]:
        """One GET: (status, body); the body is read for a status in `ok` only, `most` bytes at most."""
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect at once
            conn = self._connection()
            reused, left = self._local.used, deadline - time.monotonic()
            if left <= 0:
                raise _Transient(f"no complete answer within {self.DEADLINE_S:g} s")
            conn.deadline, conn.read_timeout_s = deadline, self.READ_TIMEOUT_S  # for the answer's reads
            conn.timeout = min(self.READ_TIMEOUT_S, left)  # for a connect and the request's send
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            try:
                conn.request("GET", self._full(name), headers={**self._headers, **headers})
                response = conn.getresponse()
                self._local.used = True
                body = _body(response, most, span) if response.status in ok else b""
                if not response.isclosed():  # not read to its end: this connection cannot serve another
                    self._drop()
                return response.status, body
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._drop()
                if attempt or not reused:
                    raise _Transient(redact_text(str(exc) or type(exc).__name__)) from None
            except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
                self._drop()
                raise _Transient(redact_text(str(exc) or type(exc).__name__)) from None
            except OSError as exc:
                self._drop()
                if isinstance(exc, _Transient | _BadAnswer):
                    raise
                raise MsaDistError(f"{self.url(name)}: {redact_text(str(exc))}") from None
        raise AssertionError("unreachable")

    def _get(self, name: str, headers: dict, ok: tuple, most: int, span=None) -> tuple[int, bytes]:
        """_once, retried with backoff on a transient failure or status while attempts and the deadline
        last; the last _Transient is raised. MsaDistError for a denied request."""
        deadline = time.monotonic() + self.DEADLINE_S
        for attempt in range(self.RETRIES):
            problem = None
            try:
                status, body = self._once(name, headers, deadline, ok, most, span)
                if status not in _RETRIED_STATUS:
                    break
            except _Transient as exc:
                problem = exc
            pause = 0.2 * 2**attempt  # backing off a throttling or restarting server
            if attempt == self.RETRIES - 1 or time.monotonic() + pause >= deadline:
                if problem is not None:
                    raise problem
                break
            time.sleep(pause)
        if status in (401, 403):
            raise MsaDistError(
                f"{self.url(name)}: HTTP {status} (access denied): give credentials in the URL "
                "(https://USER:PASSWORD@host/...), in MSA_DIST_HTTP_USER / MSA_DIST_HTTP_PASSWORD "
                "or MSA_DIST_HTTP_TOKEN with MSA_DIST_HTTP_HOST naming the host, or a signed URL's query"
            )
        return status, body

    def read(self, name: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        try:
            status, body = self._get(name, {}, (200,), limit)
        except OSError as exc:  # every attempt failed, or the file is larger than `limit`
            raise MsaDistError(f"{self.url(name)}: {exc}") from None
        if status != 200:
            raise (MissingFile if status in (404, 410) else MsaDistError)(f"{self.url(name)}: HTTP {status}")
        return self._count(body)

    def read_range(self, name: str, start: int, end: int) -> bytes:
        try:
            status, body = self._get(name, {"Range": f"bytes={start}-{end - 1}"}, (206,), end - start, (start, end))
        except OSError as exc:  # a counted skip of the samples it held
            raise OSError(f"{self.url(name)}: bytes {start}-{end - 1}: {exc}") from None
        if status == 200:
            raise MsaDistError(
                f"{self.url(name)}: the server ignores Range requests (answered 200 with the whole "
                "file); serve the shards with one that honours them, e.g. `msa-dist shards serve`"
            )
        if status != 206:
            raise OSError(f"{self.url(name)}: HTTP {status} for bytes {start}-{end - 1}")
        return self._count(body)

    def exists(self, name: str) -> bool:
        try:
            status, _ = self._get(name, {"Range": "bytes=0-0"}, (), 0)
        except OSError as exc:
            raise MsaDistError(f"{self.url(name)}: {exc}") from None
        return status in (200, 206)

    def check_ranges(self, name: str) -> None:
        self.read_range(name, 0, 1)


def _body(response: http.client.HTTPResponse, most: int, span: tuple[int, int] | None) -> bytes:
    """The response's body, `most` bytes at most (a range: exactly its bytes, from the place asked)."""
    if span is not None:
        got, (start, end) = response.getheader("Content-Range") or "", span
        match = _CONTENT_RANGE.match(got.strip())
        if not (
            match and (int(match[1]), int(match[2])) == (start, end - 1) and (match[3] == "*" or int(match[3]) >= end)
        ):
            raise _BadAnswer(f"HTTP 206 with Content-Range {got[:80]!r}, not bytes {start}-{end - 1}")
    declared = response.length  # Content-Length; None for a chunked body or one ended by closing
    if declared is not None and (declared > most or span is not None and declared != most):
        raise _BadAnswer(f"a body of {declared} bytes declared, {'asked for' if span else 'allowed'} {most}")
    body = response.read(most + 1)  # bounded whatever the server sends; each socket read under the deadline
    if len(body) > most:
        raise _BadAnswer(f"more than the {most} bytes {'asked for' if span else 'allowed'}")
    if len(body) < (most if span is not None else declared or 0):
        raise _Transient(f"a body cut short: {len(body)} of {most if span is not None else declared} bytes")
    return body


def _host_allowed(parts: urllib.parse.SplitResult) -> bool:
    """Whether MSA_DIST_HTTP_HOST (comma-separated `host` or `host:port`) names the URL's host."""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for entry in os.environ.get("MSA_DIST_HTTP_HOST", "").split(","):
        try:
            allowed = urllib.parse.urlsplit("//" + entry.strip())
            if allowed.hostname and allowed.hostname == parts.hostname and allowed.port in (None, port):
                return True
        except ValueError:  # a malformed entry names no host
            continue
    return False


def _auth_headers(user: str | None, password: str | None, parts: urllib.parse.SplitResult) -> dict:
    """Basic auth from the URL's userinfo; else, for a host MSA_DIST_HTTP_HOST names, basic auth from
    the environment or a bearer token; else none (with a warning, once a host, if some were set)."""
    if user is None:
        given = [name for name in _ENV_CREDENTIALS if os.environ.get(name) is not None]
        if not given:
            return {}
        if not _host_allowed(parts):
            if parts.netloc not in _WARNED:
                _WARNED.add(parts.netloc)
                warnings.warn(
                    f"{' and '.join(given)} not sent to {parts.netloc}: credentials from the environment go "
                    f"only to the hosts MSA_DIST_HTTP_HOST names (MSA_DIST_HTTP_HOST={parts.hostname} sends them)",
                    stacklevel=4,
                )
            return {}
        user, password = os.environ.get("MSA_DIST_HTTP_USER"), os.environ.get("MSA_DIST_HTTP_PASSWORD")
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    bearer = os.environ.get("MSA_DIST_HTTP_TOKEN")
    return {"Authorization": f"Bearer {bearer}"} if bearer else {}
