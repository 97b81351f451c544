"""A loader worker's reads in blocks mode: each partition's blocks read whole, ahead of its shuffle buffer.

A worker makes the micro batches t = w, w + W, ... of its rank (as in chunks mode); each is the next
piece of one canonical partition's stream (blocks.py), and every piece of a partition comes to the same
worker. Per partition the worker keeps a `ShuffleBuffer` of ids and the blocks' samples: a block is one
ranged request (its shard's index first, when this worker has not read it: one more). Every block the
next piece can draw from is in flight, and `data.block_read_ahead` more, on a pool of `data.read_threads`
threads; the partition of the worker's next batch is opened while this one is made, so a partition's (or
a new epoch's) first blocks are read ahead too.
A resumed worker replays each partition's buffer to its position (no reads) and reads again only the
blocks whose samples were still in the buffer, keeping those samples alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np

from msa_dist.data.format.index_bin import read_records
from msa_dist.data.loading.blocks import BlockEpoch, BlockTrainPlan
from msa_dist.data.loading.readahead import ReadPool, Run
from msa_dist.data.loading.shuffle_buffer import ShuffleBuffer


class _PartitionReads:
    """One partition's buffer of ids, its blocks in flight, and the samples read and not yet emitted."""

    def __init__(self, reader, order: BlockEpoch, partition: int, plan: BlockTrainPlan, piece: int, pool):
        self.reader, self.plan = reader, plan
        self.segments = order.segments(partition)
        self.buffer = ShuffleBuffer(self.segments, plan.buffer_samples, order.seed, order.epoch, partition)
        self.buffer.skip(piece * plan.batch_size)  # a resumed position: replayed on ids, nothing read
        self.piece = piece
        # segments entered before this point: only their samples still to come are kept (and read)
        self._wanted: dict[int, list[int]] = self.buffer.pending()
        self._entered_before = self.buffer.entered
        self._reads: dict[int, Future] = {}
        self._samples: dict[int, dict] = {}  # segment -> {offset in segment: raw sample}
        self._next_read = 0
        self._ends = np.cumsum(self.segments.hi - self.segments.lo)  # samples up to and including each segment
        self._submit(pool)  # the blocks the first piece needs (the buffer's fill), before it asks for them

    def _read(self, seg: int) -> tuple[int, bytes, object, int]:
        """(start, bytes, index, first sample of the index) of a segment: the index records are the ones this
        worker holds (all the split's, read before it forked, if they fit), else the segment's alone (one
        ranged read of the binary sidecar, where the manifest says they lie), else the whole index."""
        shard, lo, hi = int(self.segments.shard[seg]), int(self.segments.lo[seg]), int(self.segments.hi[seg])
        entry, first = self.reader.shards[shard], 0
        index = self.reader.shard_set.cached(entry["name"])
        if index is None:
            index, first = read_records(self.reader.shard_set.store, entry, lo, hi), lo
        if index is None:
            index, first = self.reader.shard_set.index(entry), 0  # the shard's index: once per worker
        start, end = index.starts[lo - first], index.ends[hi - 1 - first]
        return start, self.reader.read(shard, start, end), index, first

    def _submit(self, pool: ReadPool) -> None:
        """Keep in flight every block the next piece can take samples from (the buffer enters at most
        capacity + batch samples past those emitted) and `read_ahead_blocks` more."""
        reach = self.buffer.emitted + self.buffer.capacity + self.plan.batch_size
        needed = int(np.searchsorted(self._ends, reach - 1, side="right")) + 1
        until = min(len(self.segments), needed + self.plan.read_ahead_blocks)
        while self._next_read < until:
            seg = self._next_read
            if seg >= self._entered_before or self._wanted.get(seg):  # else: all emitted before a resume
                self._reads[seg] = pool.submit(self._read, seg)
            self._next_read += 1

    def _cut(self, seg: int) -> dict:
        """The segment's samples still to come, cut out of its bytes (exceptions where it could not be read)."""
        lo, hi = int(self.segments.lo[seg]), int(self.segments.hi[seg])
        offsets = self._wanted.pop(seg, None) or range(hi - lo)
        out: dict = {}
        try:
            start, data, index, first = self._reads.pop(seg).result()
        except OSError as exc:  # a short read or a failed request: these samples are reported and skipped
            return dict.fromkeys(offsets, exc)
        shard = int(self.segments.shard[seg])
        run = Run(shard, [(lo + offset, offset) for offset in offsets], start, start + len(data))
        self.reader.samples(run, data, start, out, index, first)
        return out

    def take(self, pool: ReadPool) -> list:
        """The next piece's raw samples (or the exceptions that stand for them)."""
        picked = self.buffer.take(self.plan.batch_size)
        self._submit(pool)
        out = []
        for sample, seg in picked:
            if seg not in self._samples:
                self._samples[seg] = self._cut(seg)
            held = self._samples[seg]
            out.append(held.pop(sample - int(self.segments.first_id[seg])))
            if not held:
                del self._samples[seg]  # its memory goes: every sample of it is out
        self.piece += 1
        return out


class BlockReads:
    """(item, raw samples) of a worker's micro batches, item = (epoch, batch, ids)."""

    def __init__(self, reader, plan: BlockTrainPlan, threads: int):
        self.reader, self.plan, self.threads = reader, plan, max(1, threads)

    def __call__(self, worker: int, workers: int) -> Iterator[tuple[tuple, list]]:
        pool = ReadPool(self.threads, "msa-block")  # daemon threads: an abandoned pass cannot hold the process
        self._orders: dict[int, BlockEpoch] = {}
        self._partitions: dict[tuple[int, int], _PartitionReads] = {}
        where = [self.plan.locate(t) for t in (worker, worker + workers)]
        try:
            for t in itertools.count(worker + 2 * workers, workers):
                if where[0] is None:
                    return
                samples = self._open(where[0], pool).take(pool)
                if where[1] is not None:  # the next batch's partition: its blocks go in flight now
                    self._open(where[1], pool)
                ids = [s.get("__key__") if isinstance(s, dict) else None for s in samples]
                yield (*where[0], ids), samples
                where = [where[1], self.plan.locate(t)]
        finally:
            pool.shutdown()

    def _open(self, where: tuple[int, int], pool: ReadPool) -> _PartitionReads:
        """The reads of the partition micro batch `where` = (epoch, batch) comes from, at its piece."""
        epoch, batch = where
        if epoch not in self._orders:  # a new epoch: those before the previous one are dropped, with their reads
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._partitions = {k: r for k, r in self._partitions.items() if k[0] >= epoch - 1}
            self._orders[epoch] = self.plan.order(epoch)
        q, piece = self.plan.piece(batch)
        reads = self._partitions.get((epoch, q))
        if reads is None or reads.piece != piece:  # first visit (or a layout that splits partitions)
            reads = _PartitionReads(self.reader, self._orders[epoch], q, self.plan, piece, pool)
            self._partitions[epoch, q] = reads
        return reads
