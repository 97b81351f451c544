"""Reading ahead: a loader worker keeps several ranged reads in flight while it makes a batch.

An object store answers each request after a fixed delay (tens of ms) whatever its size, so a
worker that asks for its runs one after another spends most of its time waiting. `ReadAhead`
plans the worker's next batches (their sample ids are known: order.py), merges runs that lie close
together in one shard into one request (`gap_bytes` at most between them, a few KiB: the bytes
read stay within a percent or so of the samples'), and hands the requests to a bounded pool of
threads (`threads`, each with its own kept-alive connection). Batches come out in their order,
each once its own requests are in: which bytes make which batch is unchanged, so the epoch order,
bytes once per epoch and exact resume are the reader's as before.

The threads are daemon threads (`ReadPool`), not a ThreadPoolExecutor's, which the interpreter
joins at exit: a read in flight when its loader is dropped (a stalled server) cannot keep the
process alive. Closing the read-ahead cancels the reads not begun; one in flight ends by its
store's deadline (stores/http.py) and its thread with it.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

MAX_REQUEST_BYTES = 64 << 20  # merged runs stop growing here: one request's bytes stay bounded


@dataclass
class Run:
    """Samples of one shard that lie back to back: [(sample in shard, slot in its batch)], bytes [start, end)."""

    shard: int
    samples: list[tuple[int, int]]
    start: int
    end: int
    request: Any = None  # the Request that reads it


@dataclass
class Request:
    """One ranged read covering one or more runs."""

    shard: int
    start: int
    end: int
    future: Future | None = None


def coalesce(runs: list[Run], gap_bytes: int) -> list[Request]:
    """One request per group of runs of a shard whose gaps are at most `gap_bytes` (overlaps merge too)."""
    requests: list[Request] = []
    for run in sorted(runs, key=lambda r: (r.shard, r.start)):
        last = requests[-1] if requests else None
        if (
            last is not None
            and last.shard == run.shard
            and run.start - last.end <= gap_bytes
            and max(last.end, run.end) - last.start <= MAX_REQUEST_BYTES
        ):
            last.end = max(last.end, run.end)
        else:
            last = Request(run.shard, run.start, run.end)
            requests.append(last)
        run.request = last
    return requests


class ReadPool:
    """At most `threads` daemon threads running submitted calls; `shutdown` cancels what has not begun
    and lets each thread end after its current call."""

    def __init__(self, threads: int, name: str):
        self.threads, self.name = max(1, threads), name
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._started: list[threading.Thread] = []

    def submit(self, call: Callable, *args) -> Future:
        future: Future = Future()
        self._tasks.put((future, call, args))
        if len(self._started) < self.threads:  # a thread per call until there are `threads`
            thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._started)}", daemon=True)
            thread.start()
            self._started.append(thread)
        return future

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, call, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call(*args))
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)

    def shutdown(self) -> None:
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task[0].cancel()
        for _ in self._started:
            self._tasks.put(None)  # one stop for each thread, taken once its current call is done


class ReadAhead:
    """Batches of samples for items (…, ids) in order, with the reads of the next ones in flight.

    `reader` gives `plan(ids) -> list[Run]`, `read(shard, start, end) -> bytes` and
    `samples(run, data, base, out)`; `batches_ahead` batches are planned (and coalesced) together,
    never two epochs in one group (an item's first element is its epoch), and up to two such groups
    are in flight."""

    def __init__(self, reader, threads: int, batches_ahead: int, gap_bytes: int):
        self.reader, self.threads = reader, max(1, threads)
        self.batches_ahead, self.gap_bytes = max(1, batches_ahead), gap_bytes

    def __call__(self, items: Iterable[tuple]) -> Iterator[tuple[tuple, list]]:
        self._held: list[tuple] = []  # items taken from `items` for the next group
        items = _Chain(self, iter(items))
        pending: collections.deque = collections.deque()  # (item, runs) in batch order
        pool = ReadPool(self.threads, "msa-read")
        try:
            while True:
                while len(pending) < 2 * self.batches_ahead and self._plan_group(items, pending, pool):
                    pass
                if not pending:
                    return
                item, runs = pending.popleft()
                yield item, self._assemble(runs, len(item[-1]))
        finally:
            pool.shutdown()

    def _plan_group(self, items: Iterator[tuple], pending: collections.deque, pool: ReadPool) -> bool:
        group = list(itertools.islice(items, self.batches_ahead))
        if group and group[-1][0] != group[0][0]:  # one epoch per group: a sample's bytes are read once per epoch
            cut = next(k for k, item in enumerate(group) if item[0] != group[0][0])
            self._held, group = group[cut:] + self._held, group[:cut]
        planned = [(item, self.reader.plan(item[-1])) for item in group]
        for request in coalesce([run for _, runs in planned for run in runs], self.gap_bytes):
            request.future = pool.submit(self.reader.read, request.shard, request.start, request.end)
        pending.extend(planned)
        return bool(group)

    def _assemble(self, runs: list[Run], size: int) -> list:
        out: list = [None] * size
        for run in runs:
            try:
                data = run.request.future.result()
            except OSError as exc:  # a short read or a failed request: these samples are reported and skipped
                # (an MsaDistError, e.g. a server that ignores Range requests, ends the run in one line)
                for _, slot in run.samples:
                    out[slot] = exc
                continue
            self.reader.samples(run, data, run.request.start, out)
        return out


class _Chain:
    """The items held back by the last group (they began a new epoch), then the rest."""

    def __init__(self, owner: ReadAhead, rest: Iterator[tuple]):
        self.owner, self.rest = owner, rest

    def __iter__(self):
        return self

    def __next__(self) -> tuple:
        if self.owner._held:
            return self.owner._held.pop(0)
        return next(self.rest)
