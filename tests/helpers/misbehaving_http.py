"""An HTTP server on 127.0.0.1 that answers as a test tells it to: wrong statuses, bodies longer or shorter
than declared, wrong Content-Range, bytes trickled or never sent (tests/test_stores_http_security.py,
tests/test_fuzz_http.py). Every loop is bounded: it stops with the `with` block, and each connection
ends when its client goes or the server stops."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Answer:
    """What to send for one request."""

    status: int = 206
    body: bytes = b""
    headers: dict = field(default_factory=dict)  # sent as given (Content-Length too: none unless given)
    trickle_s: float = 0.0  # pause before each byte of the body
    cut_after: int | None = None  # close the connection after this many body bytes
    stall: bool = False  # send the status line and headers, then nothing until the client goes


class MisbehavingServer:
    """`with MisbehavingServer(answer_for) as server:` serves at `server.url`; `answer_for(path, headers)`
    gives each request's Answer. `server.requests` lists (path, headers); `server.sent` counts body bytes sent."""

    def __init__(self, answer_for: Callable[[str, dict], Answer]):
        self.answer_for, self.requests, self.sent = answer_for, [], 0
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> MisbehavingServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=10)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _request(self, conn: socket.socket) -> tuple[str, dict] | None:
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536 and not self._stop.is_set():
            if select.select([conn], [], [], 0.1)[0]:
                chunk = conn.recv(4096)
                if not chunk:
                    return None
                data += chunk
        if b"\r\n\r\n" not in data:
            return None
        line, *lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        headers = dict(h.split(": ", 1) for h in lines if ": " in h)
        return line.split(" ")[1], headers

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with conn:
                while (request := self._request(conn)) is not None:
                    with self._lock:
                        self.requests.append(request)
                    if not self._answer(conn, self.answer_for(*request)):
                        return
        except OSError:  # the client went away
            return

    def _answer(self, conn: socket.socket, answer: Answer) -> bool:
        """Send `answer`; False once the connection is to be closed."""
        head = f"HTTP/1.1 {answer.status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
        conn.sendall(head.encode("latin-1") + b"\r\n")
        if answer.stall:
            while not self._stop.is_set():  # until the client closes (readable, then b"") or the server stops
                if select.select([conn], [], [], 0.1)[0] and not conn.recv(4096):
                    return False
            return False
        body = answer.body if answer.cut_after is None else answer.body[: answer.cut_after]
        step = 1 if answer.trickle_s else 1 << 16
        for begin in range(0, len(body), step):
            if answer.trickle_s and self._stop.wait(answer.trickle_s):  # pacing, bounded by the server's stop
                return False
            conn.sendall(body[begin : begin + step])
            with self._lock:
                self.sent += len(body[begin : begin + step])
        return answer.cut_after is None and "close" not in answer.headers.get("Connection", "")


def range_of(headers: dict) -> tuple[int, int] | None:
    """(first, last) of a `Range: bytes=A-B` header; None without one."""
    value = headers.get("Range")
    if value is None:
        return None
    first, last = value.split("=", 1)[1].split("-")
    return int(first), int(last)


def honest(data: bytes) -> Callable[[str, dict], Answer]:
    """Answers as a server that honours Range requests would, for one file holding `data`."""

    def answer_for(path: str, headers: dict) -> Answer:
        span = range_of(headers)
        if span is None:
            return Answer(200, data, {"Content-Length": len(data)})
        first, last = span
        body = data[first : last + 1]
        return Answer(206, body, {"Content-Length": len(body), "Content-Range": f"bytes {first}-{last}/{len(data)}"})

    return answer_for
