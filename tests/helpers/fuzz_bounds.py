"""Bounds around one fuzz example (memory and time), and the one-line check every fuzzed reader must pass."""

from __future__ import annotations

import contextlib
import resource
import signal

from msa_dist.common.errors import MsaDistError

HANG_S = 60  # per example: only a hang (an endless loop, a blocking read) comes near it
MEMORY_HEADROOM = 3 << 30  # address space an example may add to what the test process already maps


@contextlib.contextmanager
def bounded():
    """A memory bound (soft RLIMIT_AS: allocations beyond it fail with MemoryError, a test failure)
    and a hang bound (SIGALRM) around one example; both restored after it."""
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)

    def hang(signum, frame):
        raise TimeoutError(f"an example ran {HANG_S} s: a hang")

    old_handler = signal.signal(signal.SIGALRM, hang)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.alarm(HANG_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def one_line_or_nothing(call) -> None:
    """The call returns, or raises MsaDistError (the CLI's one line); anything else fails the test."""
    try:
        call()
    except MsaDistError as exc:
        assert "\n" not in str(exc).strip() or str(exc).startswith("Caught"), str(exc)
