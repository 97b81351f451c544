"""Helpers of the security tests (tests/unit/data/test_crafted_shards.py, tests/unit/common/test_limits.py)."""

from __future__ import annotations

import contextlib
import io
import signal

from PIL import Image


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Turn a hang (the old code's infinite loop or blocking open) into a failure, not a stuck suite."""

    def fail(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def small_jpeg(size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()
