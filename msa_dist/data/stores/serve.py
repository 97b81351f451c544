"""`msa-dist shards serve`: a shard folder over HTTP with Range requests, for a few nodes or a test.

The loader asks for byte ranges, so GET honours `Range: bytes=START-END` (one range, or a suffix
`bytes=-N`) with 206 Partial Content; no Range header sends the whole file (200); any other Range
value is answered 416. What it will not do, because the folder may sit beside other files:
- serve anything but a regular file inside the folder: no directory listings, no dotfiles or
  dot-folders (asked for, or reached through a symlink), no symlink whose target lies outside the
  folder, no FIFO or device;
- hold a response in memory: bodies go out in CHUNK_BYTES pieces;
- keep a socket forever: a request's line and headers must arrive complete within `idle_timeout_s`
  of waiting for them (an overall deadline, not per read: a client that trickles a byte at a time
  is cut off like an idle one);
- start a thread per connection without bound: at most `max_connections` are served at once, the
  next wait in the listen queue.
`latency_ms` delays every answer (a stand-in for an object store's time to first byte, for
benchmarks). It listens on 127.0.0.1 unless told otherwise. For many nodes, serve the shards with
a production web server or object storage: any server that honours Range requests works.
"""

from __future__ import annotations

import math
import os
import re
import stat
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from msa_dist.data.stores.deadline import buffered

CHUNK_BYTES = 256 << 10
_RANGE = re.compile(r"bytes=(\d{1,19})?-(\d{1,19})?$")  # 19 digits: any 64-bit offset, nothing longer


class RangeHandler(BaseHTTPRequestHandler):
    """Regular files of `directory` with single byte ranges; quiet (no line per request)."""

    protocol_version = "HTTP/1.1"  # keep-alive: one connection per reader thread
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall
    timeout = 60  # seconds a request may take to arrive, idle time included (overridden per server)

    def __init__(self, *args, directory: str, latency_s: float = 0.0, **kwargs):
        self.root, self.latency_s = os.path.realpath(directory), latency_s
        super().__init__(*args, **kwargs)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain reader made above: requests are read under a deadline instead
        self.rfile, self._reader = buffered(self.connection, self.timeout)

    def handle_one_request(self) -> None:
        # from now, the next request's line and headers have `timeout` seconds in all to arrive
        # (a TimeoutError past it closes the connection: BaseHTTPRequestHandler catches it)
        self._reader.deadline = time.monotonic() + self.timeout
        super().handle_one_request()

    def log_message(self, format, *args) -> None:
        pass

    def _file(self) -> str | None:
        """The real path of the regular file the request names, or None (answered 404)."""
        parts = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).split("/")
        names = [p for p in parts if p]
        if not names or any(p.startswith(".") or "\\" in p or "\0" in p for p in names):
            return None
        path = os.path.realpath(os.path.join(self.root, *names))
        if os.path.commonpath([path, self.root]) != self.root:
            return None  # a symlink out of the folder
        if any(p.startswith(".") for p in os.path.relpath(path, self.root).split(os.sep)):
            return None  # a symlink to a dotfile or into a dot-folder: what it names is checked, not the link
        try:
            return path if stat.S_ISREG(os.stat(path).st_mode) else None
        except OSError:
            return None

    def _status(self, code: int, size: int | None = None) -> None:
        self.send_response(code)
        if size is not None:
            self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _span(self, size: int) -> tuple[int, int] | None:
        """[first, last] byte of the Range header (the whole file without one); None: unsatisfiable."""
        value = self.headers.get("Range")
        if value is None:
            return (0, size - 1) if size else None
        match = _RANGE.match(value.strip())
        if match is None or match.group(1) is None and match.group(2) is None:
            return None
        if match.group(1) is None:  # bytes=-N: the last N bytes
            return (max(size - int(match.group(2)), 0), size - 1) if int(match.group(2)) and size else None
        first = int(match.group(1))
        last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        return (first, last) if first <= last else None

    def _answer(self, body: bool) -> None:
        self._reader.deadline = math.inf  # the request is in; the answer's writes have the socket timeout
        self.connection.settimeout(self.timeout)
        if self.latency_s:
            time.sleep(self.latency_s)  # the benchmark's stand-in for an object store's time to first byte
        path = self._file()
        if path is None:
            return self._status(404)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            span = self._span(size)
            if span is None and not (size == 0 and "Range" not in self.headers):
                return self._status(416, size)
            first, last = span or (0, -1)
            self.send_response(206 if "Range" in self.headers else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            if "Range" in self.headers:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.send_header("Content-Length", str(last - first + 1))
            self.end_headers()
            if body:
                self._send(f, first, last - first + 1)

    def _send(self, f, offset: int, length: int) -> None:
        """`length` bytes of `f` from `offset`, CHUNK_BYTES at a time."""
        f.seek(offset)
        while length > 0:
            chunk = f.read(min(CHUNK_BYTES, length))
            if not chunk:  # the file shrank under us: the client sees a short body
                self.close_connection = True
                return
            self.wfile.write(chunk)
            length -= len(chunk)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once; a request that does not arrive in time
    (idle, or trickled) closes its connection."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address, handler, max_connections: int):
        self.slots = threading.BoundedSemaphore(max_connections)
        self.max_connections, self.closing = max_connections, False
        super().__init__(address, handler)

    def shutdown(self) -> None:
        self.closing = True
        super().shutdown()

    def process_request(self, request, client_address) -> None:
        # the accept loop waits here while every slot is taken: further clients queue in the backlog
        while not self.slots.acquire(timeout=0.1):
            if self.closing:
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        pass  # a client that went away or timed out: nothing to print


def make_server(
    directory: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    handler: type = RangeHandler,
    latency_ms: float = 0.0,
    idle_timeout_s: float = 60.0,
    max_connections: int = 256,
) -> BoundedHTTPServer:
    """A server for `directory` (port 0: a free one; see `server.server_address`)."""
    if not Path(directory).is_dir():
        from msa_dist.common.errors import MsaDistError

        raise MsaDistError(f"shards serve: {directory} is not a directory")
    if latency_ms < 0 or idle_timeout_s <= 0 or max_connections < 1:
        from msa_dist.common.errors import MsaDistError

        raise MsaDistError("shards serve: --latency-ms must be >= 0, --idle-timeout-s > 0, --max-connections >= 1")
    timed = type(handler.__name__, (handler,), {"timeout": idle_timeout_s})
    extra = {"latency_s": latency_ms / 1000} if issubclass(handler, RangeHandler) else {}
    factory = partial(timed, directory=str(directory), **extra)
    return BoundedHTTPServer((host, port), factory, max_connections)


@contextmanager
def serving(directory: str | Path, host: str = "127.0.0.1", handler: type = RangeHandler, **options) -> Iterator[str]:
    """Serve `directory` in a background thread for the duration of the block; yields its URL."""
    server = make_server(directory, host, handler=handler, **options)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def add_serve_options(parser) -> None:
    """`shards serve`'s options beyond the folder, host and port."""
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="delay every answer this long: an object store's time to first byte, for benchmarks",
    )
    parser.add_argument(
        "--idle-timeout-s",
        type=float,
        default=60.0,
        help="close a connection whose next request has not arrived complete this long (default %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="connections served at once (a thread each); more wait (default %(default)s)",
    )


def run_serve(args, console) -> None:
    """`shards serve`: until Ctrl-C."""
    server = make_server(
        args.shard_dir,
        args.host,
        args.port,
        latency_ms=getattr(args, "latency_ms", 0.0),
        idle_timeout_s=getattr(args, "idle_timeout_s", 60.0),
        max_connections=getattr(args, "max_connections", 256),
    )
    console.print(f"serving {args.shard_dir} at http://{args.host}:{server.server_address[1]} (Ctrl-C stops)")
    with server:
        server.serve_forever()
