"""Issue 29, `shards serve` (data/stores/serve.py): clients that trickle their request cannot hold every
connection slot (item 15), and a symlink inside the folder does not serve the dotfile it points at (item 20).
The server listens on 127.0.0.1; the trickling clients stop themselves."""

from __future__ import annotations

import http.client
import os
import socket
import threading
import urllib.parse

import pytest
from security_utils import no_hang

from msa_dist.data.stores.serve import RangeHandler, serving

ACCEPTED = threading.Semaphore(0)  # released once per connection a handler took on


class CountingHandler(RangeHandler):
    def setup(self) -> None:
        super().setup()
        ACCEPTED.release()


def _trickle(port: int, stop: threading.Event) -> None:
    """A request sent a byte every 0.2 s (never 1 s apart: the old per-read timeout never fired), for at
    most 60 s; ends when the server closes the connection or the test is over."""
    request = b"GET /a.tar HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 300 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        for byte in request:
            try:
                conn.sendall(bytes([byte]))
            except OSError:  # the server cut it off
                return
            if stop.wait(0.2):  # pacing, not synchronisation: the test ends it through `stop`
                return


def test_trickling_clients_cannot_lock_out_an_honest_one(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"honest bytes")
    stop = threading.Event()
    with no_hang(90), serving(tmp_path, handler=CountingHandler, idle_timeout_s=1.0, max_connections=2) as base:
        port = urllib.parse.urlsplit(base).port
        tricklers = [threading.Thread(target=_trickle, args=(port, stop), daemon=True) for _ in range(2)]
        try:
            for thread in tricklers:
                thread.start()
            for _ in tricklers:  # both slots are taken by trickling clients
                assert ACCEPTED.acquire(timeout=30)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/a.tar")  # served once the deadline cut a trickler off (old: after 60+ s)
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"honest bytes")
            conn.close()
        finally:
            stop.set()
            for thread in tricklers:
                thread.join(timeout=30)


def test_an_idle_keep_alive_connection_is_still_closed(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"x")
    with serving(tmp_path, idle_timeout_s=0.3) as base:
        conn = http.client.HTTPConnection("127.0.0.1", urllib.parse.urlsplit(base).port, timeout=30)
        conn.request("GET", "/a.tar")
        assert conn.getresponse().read() == b"x"
        assert conn.sock.recv(1) == b""  # closed by the server after the answer, while idle
        conn.close()


@pytest.mark.parametrize("target", [".secret", ".git/config", ".git"])
def test_a_symlink_to_a_dotfile_inside_the_folder_is_not_served(tmp_path, target):
    root = tmp_path / "served"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "config").write_bytes(b"[credential] token")
    (root / ".secret").write_bytes(b"hidden")
    (root / "a.tar").write_bytes(b"fine")
    os.symlink(root / target, root / "link.tar")
    with serving(root) as base:
        conn = http.client.HTTPConnection("127.0.0.1", urllib.parse.urlsplit(base).port, timeout=30)
        for path, expected in (("/link.tar", (404, b"")), ("/a.tar", (200, b"fine"))):
            conn.request("GET", path)
            response = conn.getresponse()
            assert (response.status, response.read()) == expected, path
        conn.close()
