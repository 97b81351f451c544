"""Issue 29, the HTTP store (data/stores/http.py) against a server it must not trust: credentials from the
environment go only to the host named for them (item 4); a body is read no further than asked or allowed
(item 6); timeouts, trickles and short bodies are retried within a deadline, then a counted skip (item 7);
a 206 must hold the bytes asked for (item 18). Servers run on 127.0.0.1 (tests/misbehaving_http.py)."""

from __future__ import annotations

import base64
import json
import threading
import warnings

import pytest
from misbehaving_http import Answer, MisbehavingServer, honest, range_of
from security_utils import no_hang

from msa_dist.common.errors import MsaDistError
from msa_dist.data.format.index import read_index
from msa_dist.data.stores import HttpStore
from msa_dist.data.stores.serve import RangeHandler, serving

DATA = bytes(range(256)) * 64  # 16 KiB


def _store(url: str, read_timeout_s: float = 1.0, deadline_s: float = 5.0) -> HttpStore:
    store = HttpStore(url)
    store.READ_TIMEOUT_S, store.DEADLINE_S = read_timeout_s, deadline_s
    return store


# -- item 4: credentials from the environment go to the host they were given for -----------------------

SEEN: list[str] = []  # the Authorization header of every request ("" without one)
_LOCK = threading.Lock()


class RecordingHandler(RangeHandler):
    def _answer(self, body: bool) -> None:
        with _LOCK:
            SEEN.append(self.headers.get("Authorization", ""))
        super()._answer(body)


@pytest.fixture
def served(tmp_path, monkeypatch):
    (tmp_path / "a.tar").write_bytes(DATA)
    for name in ("MSA_DIST_HTTP_HOST", "MSA_DIST_HTTP_USER", "MSA_DIST_HTTP_PASSWORD", "MSA_DIST_HTTP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    SEEN.clear()
    with serving(tmp_path, handler=RecordingHandler) as base:
        yield base


def _authorization(url: str) -> str:
    SEEN.clear()
    assert HttpStore(url).read_range("a.tar", 0, 4) == DATA[:4]
    return SEEN[-1]


def test_an_environment_token_goes_only_to_the_host_named_for_it(served, monkeypatch):
    monkeypatch.setenv("MSA_DIST_HTTP_TOKEN", "tok-3141")
    with pytest.warns(UserWarning, match="MSA_DIST_HTTP_TOKEN not sent to 127.0.0.1:.*MSA_DIST_HTTP_HOST"):
        assert _authorization(served) == ""  # a host nobody named: a config.yaml from elsewhere
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # told once a host, not at every store
        assert _authorization(served) == ""
    port = served.rsplit(":", 1)[1]
    for named, sent in (
        ("other.example", False),
        (f"127.0.0.1:{int(port) + 1}", False),
        ("127.0.0.1", True),
        (f"other.example, 127.0.0.1:{port}", True),
    ):
        monkeypatch.setenv("MSA_DIST_HTTP_HOST", named)
        assert _authorization(served) == ("Bearer tok-3141" if sent else ""), named


def test_environment_basic_auth_is_bound_too_and_the_urls_own_goes_to_its_host(served, monkeypatch):
    monkeypatch.setenv("MSA_DIST_HTTP_USER", "reader")
    monkeypatch.setenv("MSA_DIST_HTTP_PASSWORD", "pw-2718")
    with pytest.warns(UserWarning, match="MSA_DIST_HTTP_USER and MSA_DIST_HTTP_PASSWORD not sent"):
        assert _authorization(served.replace("127.0.0.1", "localhost")) == ""
    monkeypatch.setenv("MSA_DIST_HTTP_HOST", "127.0.0.1")
    assert _authorization(served) == "Basic " + base64.b64encode(b"reader:pw-2718").decode()
    monkeypatch.delenv("MSA_DIST_HTTP_HOST")
    own = served.replace("http://", "http://me:url-pw@")  # given with the URL: for that URL's host
    assert _authorization(own) == "Basic " + base64.b64encode(b"me:url-pw").decode()


# -- item 6: no more than asked for, no more than allowed ------------------------------------------------


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_longer_than_the_range_is_not_read(declared):
    """A 206 of 64 MiB to a 512-byte Range: refused after at most what the socket buffers hold."""
    huge = bytes(64 << 20)
    headers = {"Content-Range": "bytes 0-511/100000000"}
    headers.update({"Content-Length": len(huge)} if declared else {"Connection": "close"})
    refused = pytest.raises(OSError, match="bytes 0-511: (a body of 67108864 bytes declared|more than the 512)")
    with no_hang(), MisbehavingServer(lambda path, h: Answer(206, huge, headers)) as server, refused:
        _store(server.url).read_range("a.tar", 0, 512)
    assert server.sent < 32 << 20  # the old reader took all 64 MiB


def test_whole_file_reads_are_capped(monkeypatch):
    index = json.dumps({"format": 1, "pad": "x" * (4 << 20)}).encode()
    with MisbehavingServer(lambda path, h: Answer(200, index, {"Content-Length": len(index)})) as server:
        monkeypatch.setattr("msa_dist.data.format.index.MAX_INDEX_BYTES", 1 << 20)
        with pytest.raises(MsaDistError, match="a body of .* bytes declared, allowed 1048576"):
            read_index(_store(server.url), "a.tar")
        with pytest.raises(MsaDistError, match="allowed 1000"):
            _store(server.url).read("manifest.json", 1000)


# -- item 7: timeouts, trickles and short bodies ------------------------------------------------------------


class Flaky:
    """The honest answer, but the first `bad` requests get `how` (a short body, a stall)."""

    def __init__(self, bad: int, how: str):
        self.bad, self.how, self.honest = bad, how, honest(DATA)

    def __call__(self, path: str, headers: dict) -> Answer:
        answer = self.honest(path, headers)
        if self.bad > 0:
            self.bad -= 1
            if self.how == "short":
                answer.cut_after = len(answer.body) // 2
            else:
                answer.stall = True
        return answer


@pytest.mark.parametrize("how", ["short", "stall"])
def test_short_bodies_and_timeouts_are_retried(how):
    with no_hang(), MisbehavingServer(Flaky(2, how)) as server:
        assert _store(server.url, read_timeout_s=0.5).read_range("a.tar", 100, 4196) == DATA[100:4196]
        assert len(server.requests) == 3


@pytest.mark.parametrize("how", ["short", "stall"])
def test_a_read_that_keeps_failing_is_a_counted_skip_not_the_end_of_the_run(how):
    """OSError: the loader's skip (readahead.py counts it); the old store raised MsaDistError, ending the run."""
    with no_hang(), MisbehavingServer(Flaky(100, how)) as server:
        store = _store(server.url, read_timeout_s=0.3)
        with pytest.raises(OSError) as raised:
            store.read_range("a.tar", 0, 4096)
        assert not isinstance(raised.value, MsaDistError) and len(server.requests) == store.RETRIES
        assert "\n" not in str(raised.value)


def test_a_trickling_server_cannot_hold_a_reader_past_the_deadline():
    """A byte every 0.1 s never trips the 1 s socket timeout; the 2 s deadline ends the read."""

    def trickle(path, headers):
        first, last = range_of(headers)
        return Answer(
            206,
            DATA[first : last + 1],
            {"Content-Length": last + 1 - first, "Content-Range": f"bytes {first}-{last}/{len(DATA)}"},
            trickle_s=0.1,
        )

    with no_hang(30), MisbehavingServer(trickle) as server, pytest.raises(OSError, match="deadline"):
        _store(server.url, read_timeout_s=1.0, deadline_s=2.0).read_range("a.tar", 0, 4096)


# -- item 18: Content-Range -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_range",
    [None, "bytes 0-9/16384", "bytes 10-18/16384", "bytes 10-19/15", "bytes */16384", "items 10-19/16384"],
)
def test_a_206_must_hold_the_bytes_asked_for(content_range):
    """10 bytes from offset 0 answered to `Range: bytes=10-19` are not the sample."""
    headers = {"Content-Length": 10, **({"Content-Range": content_range} if content_range else {})}
    wrong = MisbehavingServer(lambda path, h: Answer(206, DATA[:10], headers))
    with wrong as server, pytest.raises(OSError, match="Content-Range"):
        _store(server.url).read_range("a.tar", 10, 20)
    good = {"Content-Length": 10, "Content-Range": "bytes 10-19/*"}  # an unknown total is fine
    with MisbehavingServer(lambda path, h: Answer(206, DATA[10:20], good)) as server:
        assert _store(server.url).read_range("a.tar", 10, 20) == DATA[10:20]
