"""Fuzzing the HTTP store (data/stores/http.py, issue 29) with a server on 127.0.0.1 that misbehaves: any
status, a body shorter or longer than asked, declared or not, chunked, trickled or stalled, a Content-Range
that names other bytes. Every ranged read must return exactly the bytes asked for or fail in one line
(OSError: a counted skip; MsaDistError: the run's one line), within a hang bound (an alarm per example),
and read from the socket little more than it asked for.

Derandomized (the same examples every run, ~15 s); `FUZZ_HTTP_EXAMPLES=2000` is the long run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from misbehaving_http import Answer, MisbehavingServer
from security_utils import no_hang

from msa_dist.common.errors import MsaDistError
from msa_dist.data.stores import HttpStore
from msa_dist.data.stores.deadline import DeadlineReader

EXAMPLES = int(os.environ.get("FUZZ_HTTP_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
DATA = bytes(range(251)) * 400  # ~100 KB; 251: no two offsets hold the same run of bytes
SLACK = 64 << 10  # what a buffered socket read may take beyond the body (headers, one buffer)

answers = st.fixed_dictionaries(
    {
        "status": st.sampled_from([206] * 6 + [200, 404, 416, 500, 503]),
        "range": st.sampled_from(["right"] * 4 + ["from zero", "shifted", "missing", "garbage", "small total", "*"]),
        "length": st.sampled_from(["right"] * 3 + ["short", "long", "empty"]),
        "framing": st.sampled_from(["declared", "declared", "close", "chunked", "lying length"]),
        "pace": st.sampled_from(["fast"] * 5 + ["trickle", "stall"]),
    }
)


def _answer(spec: dict, first: int, last: int) -> Answer:
    """What the server sends for `Range: bytes=first-last`, as `spec` says."""
    begin = {"from zero": 0, "shifted": first + 1}.get(spec["range"], first)
    size = {"short": (last + 1 - first) // 2, "long": last + 1 - first + (1 << 20), "empty": 0}
    body = (DATA * 12)[begin : begin + size.get(spec["length"], last + 1 - first)]
    headers = {
        "right": {"Content-Range": f"bytes {begin}-{begin + len(body) - 1}/{len(DATA)}"},
        "from zero": {"Content-Range": f"bytes 0-{len(body) - 1}/{len(DATA)}"},
        "shifted": {"Content-Range": f"bytes {begin}-{begin + len(body) - 1}/{len(DATA)}"},
        "missing": {},
        "garbage": {"Content-Range": "bytes \u00e9-\x01/??"},
        "small total": {"Content-Range": f"bytes {first}-{last}/{last}"},
        "*": {"Content-Range": f"bytes {first}-{last}/*"},
    }[spec["range"]]
    if spec["framing"] == "declared":
        headers["Content-Length"] = len(body)
    elif spec["framing"] == "lying length":
        headers["Content-Length"] = last + 1 - first  # the length asked for, whatever the body is
    elif spec["framing"] == "close":
        headers["Connection"] = "close"
    else:
        headers["Transfer-Encoding"] = "chunked"
        pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
        body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    return Answer(
        spec["status"],
        body,
        headers,
        trickle_s=0.02 if spec["pace"] == "trickle" else 0.0,
        stall=spec["pace"] == "stall",
    )


class Scripted:
    """The server's answers: each request's from the current example's spec."""

    spec: dict = {}

    def __call__(self, path: str, headers: dict) -> Answer:
        first, last = (int(x) for x in headers["Range"].split("=", 1)[1].split("-"))
        return _answer(self.spec, first, last)


SCRIPT = Scripted()
SERVER = MisbehavingServer(SCRIPT)


def setup_module(module) -> None:
    SERVER.__enter__()


def teardown_module(module) -> None:
    SERVER.__exit__(None, None, None)


@FUZZ
@given(spec=answers, start=st.integers(0, len(DATA) - 2), size=st.integers(1, 4096))
def test_a_ranged_read_is_the_right_bytes_or_one_line(spec, start, size):
    end = min(start + size, len(DATA))
    SCRIPT.spec = spec
    store = HttpStore(SERVER.url)
    store.READ_TIMEOUT_S, store.DEADLINE_S = 0.3, 0.8
    received = [0]
    original = DeadlineReader.readinto

    def counted(self, buffer):
        n = original(self, buffer)
        received[0] += n or 0
        return n

    DeadlineReader.readinto = counted
    try:
        with no_hang(20):  # the deadline is 0.8 s (backoff pauses included): only a hang comes near 20 s
            data = store.read_range("a.tar", start, end)
        assert data == DATA[start:end], spec  # returned: exactly the bytes asked for
    except (OSError, MsaDistError) as exc:
        assert "\n" not in str(exc) and str(exc), (spec, str(exc))
    finally:
        DeadlineReader.readinto = original
    # one answer's body at most (plus headers and a buffer) for each attempt: never a 1 MiB overlong body
    assert received[0] <= store.RETRIES * (end - start + SLACK), (spec, received[0])
