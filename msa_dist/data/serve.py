"""`msa-dist shards serve`: a shard folder over HTTP with Range requests, for a few nodes or a test.

Python's `http.server` answers every GET with the whole file; the loader asks for byte ranges,
so this handler honours `Range: bytes=START-END` (one range) with 206 Partial Content. It listens
on 127.0.0.1 unless told otherwise. For many nodes, serve the shards with a production web server
or object storage: any server that honours Range requests works.
"""
from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single byte ranges; quiet (no line per request)."""

    protocol_version = "HTTP/1.1"  # keep-alive: one connection per loader worker
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        match = _RANGE.match(self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if match is None or not os.path.isfile(path):
            return super().do_GET()
        size = os.path.getsize(path)
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
        if start > end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def make_server(directory: str | Path, host: str = "127.0.0.1", port: int = 0,
                handler: type = RangeHandler) -> ThreadingHTTPServer:
    """A server for `directory` (port 0: a free one; see `server.server_address`)."""
    server = ThreadingHTTPServer((host, port), partial(handler, directory=str(directory)))
    server.daemon_threads = True
    return server


@contextmanager
def serving(directory: str | Path, host: str = "127.0.0.1", handler: type = RangeHandler) -> Iterator[str]:
    """Serve `directory` in a background thread for the duration of the block; yields its URL."""
    server = make_server(directory, host, handler=handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
