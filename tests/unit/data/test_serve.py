"""`msa-dist shards serve` (data/stores/serve.py) on 127.0.0.1: ranges streamed in chunks, idle sockets closed,
connections bounded, only regular files inside the folder, malformed ranges answered 416."""

from __future__ import annotations

import http.client
import os
import select
import socket
import time
import tracemalloc
import urllib.parse

import pytest

from msa_dist.common.errors import MsaDistError
from msa_dist.data.stores.serve import CHUNK_BYTES, serving

DATA = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "served"
    (root / "sub").mkdir(parents=True)
    (root / "a.tar").write_bytes(DATA)
    (root / "sub" / "b.tar").write_bytes(b"inside")
    (root / ".secret").write_bytes(b"hidden")
    (tmp_path / "outside.txt").write_bytes(b"outside the folder")
    os.symlink(tmp_path / "outside.txt", root / "escape.tar")
    os.symlink(root / "a.tar", root / "link.tar")
    return root


def _get(base: str, path: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_ranges_whole_files_and_malformed_ranges(folder):
    with serving(folder) as base:
        assert _get(base, "/a.tar", {"Range": "bytes=10-19"})[::2] == (206, DATA[10:20])
        assert _get(base, "/a.tar", {"Range": "bytes=16380-"})[::2] == (206, DATA[16380:])
        assert _get(base, "/a.tar", {"Range": "bytes=-3"})[::2] == (206, DATA[-3:])
        assert _get(base, "/a.tar")[::2] == (200, DATA)
        status, headers, body = _get(base, "/a.tar", method="HEAD")
        assert (status, headers["Content-Length"], body) == (200, str(len(DATA)), b"")
        for bad in (
            "bytes=" + "9" * 5000 + "-",
            "bytes=0-" + "1" * 5000,
            "bytes=0-1,4-5",
            "bytes=20-10",
            f"bytes={len(DATA)}-",
            "bytes=-0",
            "items=0-1",
            "bytes=-",
        ):
            status, headers, _ = _get(base, "/a.tar", {"Range": bad})
            assert (status, headers.get("Content-Range")) == (416, f"bytes */{len(DATA)}"), bad
        assert _get(base, "/a.tar", {"Range": "bytes=0-0"})[::2] == (206, DATA[:1])  # the connection still works


def test_only_regular_files_inside_the_folder(folder, tmp_path):
    os.mkfifo(folder / "pipe.tar")  # opening a FIFO would block the server thread
    with serving(folder) as base:
        assert _get(base, "/sub/b.tar")[::2] == (200, b"inside")
        assert _get(base, "/link.tar")[::2] == (200, DATA)  # a link inside the folder is fine
        for path in (
            "/escape.tar",
            "/.secret",
            "/sub/",
            "/sub",
            "/",
            "/..%2foutside.txt",
            "/../outside.txt",
            "/sub/../../outside.txt",
            "/pipe.tar",
            "/missing.tar",
            "/%2e%2e/outside.txt",
        ):
            status, _, body = _get(base, path)
            assert (status, body) == (404, b""), path


def test_a_large_range_is_streamed_in_chunks(tmp_path):
    """16 MB in one range: the server never holds more than a chunk of it (the old one held it all)."""
    (tmp_path / "big.tar").write_bytes(os.urandom(16 << 20))
    with serving(tmp_path) as base:
        parts = urllib.parse.urlsplit(base)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        tracemalloc.start()
        try:
            conn.request("GET", "/big.tar", headers={"Range": f"bytes=1-{(16 << 20) - 2}"})
            response = conn.getresponse()
            received = 0
            while chunk := response.read(64 << 10):
                received += len(chunk)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            conn.close()
    assert response.status == 206 and received == (16 << 20) - 2
    assert peak < 8 * CHUNK_BYTES, peak


def test_idle_sockets_are_closed(folder):
    with serving(folder, idle_timeout_s=0.3) as base:
        port = urllib.parse.urlsplit(base).port
        with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
            assert idle.recv(1) == b""  # the server closed it (a client timeout would raise instead)


def test_connections_are_bounded_and_wait_their_turn(folder):
    with serving(folder, max_connections=2) as base:
        port = urllib.parse.urlsplit(base).port
        first = socket.create_connection(("127.0.0.1", port), timeout=30)
        second = socket.create_connection(("127.0.0.1", port), timeout=30)
        third = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            third.sendall(b"GET /sub/b.tar HTTP/1.1\r\nHost: x\r\n\r\n")
            readable, _, _ = select.select([third], [], [], 1.0)
            assert not readable, "a third connection was served while two held every slot"
            first.close()  # frees a slot: the third is served now
            assert third.recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            for s in (first, second, third):
                s.close()


def test_latency_is_added_to_every_answer(folder):
    with serving(folder, latency_ms=150) as base:
        begin = time.perf_counter()
        assert _get(base, "/a.tar", {"Range": "bytes=0-0"})[0] == 206
        assert time.perf_counter() - begin >= 0.15


def test_bad_options_are_one_line(folder):
    with pytest.raises(MsaDistError, match="not a directory"), serving(folder / "a.tar"):
        pass
    with pytest.raises(MsaDistError, match="--max-connections"), serving(folder, max_connections=0):
        pass
