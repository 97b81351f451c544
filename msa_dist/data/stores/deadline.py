"""Socket reads under an overall deadline, for the HTTP client (http.py) and `shards serve` (serve.py).

A socket timeout bounds one read only: a peer that sends a byte just before each timeout keeps a
reader (a request, a server thread) forever. `DeadlineReader` sets the socket's timeout before
every read to what is left of its deadline (at most `read_timeout_s`) and refuses to read past it,
so a whole answer or request takes at most the deadline, however the peer trickles.
"""

from __future__ import annotations

import io
import math
import socket
import time


class DeadlineReader(io.RawIOBase):
    """A socket's reads (wrap it in io.BufferedReader): each waits at most `read_timeout_s` and none
    goes past `deadline` (time.monotonic(); math.inf: no deadline); TimeoutError once it passed."""

    def __init__(self, sock: socket.socket, read_timeout_s: float):
        super().__init__()
        self._sock, self._raw = sock, sock.makefile("rb", buffering=0)  # makefile: the socket counts it
        self.read_timeout_s, self.deadline = read_timeout_s, math.inf

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer did not arrive complete within its deadline")
        self._sock.settimeout(min(self.read_timeout_s, left))
        try:
            return self._raw.readinto(buffer)
        except TimeoutError:  # say which bound it was
            if time.monotonic() >= self.deadline:
                raise TimeoutError("the answer did not arrive complete within its deadline") from None
            raise TimeoutError(f"no byte for {self.read_timeout_s:g} s") from None

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def buffered(sock: socket.socket, read_timeout_s: float) -> tuple[io.BufferedReader, DeadlineReader]:
    """A buffered reader of `sock` and its DeadlineReader (set `.deadline` on it)."""
    raw = DeadlineReader(sock, read_timeout_s)
    return io.BufferedReader(raw), raw
