"""The blocks read mode (`data.read_mode=blocks`, or auto on a large split): few large reads, mixed in a buffer.

The rule, the same on every rank (no rank needs to talk to another):
- each shard is cut into blocks of consecutive samples, about `data.block_bytes` each (ceil(shard bytes
  / block_bytes) blocks of equal sample counts, from the manifest; one block per shard when it gives no
  size): a block's samples lie back to back, so one ranged request reads it;
- the epoch's blocks are shuffled by a keyed permutation of (seed, epoch) (order.py's
  `KeyedPermutation`); the shuffled blocks, as one sequence of samples, are cut into P equal ranges,
  the canonical partitions (`data.canonical_partitions`); a block cut by a range's end is read in two
  parts, one by each partition, so every byte is read once per epoch;
- partition q's samples go through its own shuffle buffer (shuffle_buffer.py), keyed by (seed, epoch,
  q): its sample stream depends on (seed, epoch, q) alone;
- the epoch's micro batches: global micro batch g (of batch_size samples) is piece g // P of partition
  g % P's stream; a global batch of world x accumulation micro batches is the next slice of them, and
  rank r's micro round a of step t is global micro batch (t x accum + a) x world + r, as order.py lays
  out samples. The epoch ends when the shortest partition has no whole piece left for every partition.
So the order depends on (seed, epoch, P, batch_size, block_bytes, shuffle_buffer_samples) and not on the
world size: every layout with P a multiple of world x lcm(accum, workers) sees the same batches, and a
position resumes exactly on any such layout with the same micro batch. That condition also makes each
partition's pieces land on one DataLoader worker (its visits are P / world micro batches apart), so one
worker reads each block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from msa_dist.common.errors import MsaDistError
from msa_dist.data.format.shard_table import shard_column
from msa_dist.data.loading.order import KeyedPermutation, TrainPlan, stable_int

MARK_SLOTS = 64  # an epoch keeps the samples up to every 64th slot; a slot between is found in one window
SAME_ORDER_RANKS = 8  # canonical_partitions=0: every world size dividing this gets the same order
BLOCKS_VERSION = 1  # bumped whenever the rule above changes: an old position then restarts its epoch


class BlockTable:
    """The split's blocks: block b is samples [lo, hi) of one shard; a few int64 per shard."""

    def __init__(self, shard_samples, shard_bytes, block_bytes: int):
        if block_bytes < 1:
            raise ValueError(f"data.block_bytes must be >= 1, got {block_bytes}")
        self.samples = np.asarray(shard_samples, dtype=np.int64)
        nbytes = np.asarray(shard_bytes, dtype=np.int64)
        wanted = np.where(nbytes > 0, -(-nbytes // block_bytes), 1)  # a shard of unknown size: one block
        self.per_shard = np.maximum(1, np.minimum(wanted, self.samples))
        self.first_block = np.concatenate([[0], np.cumsum(self.per_shard)])
        self.first_id = np.concatenate([[0], np.cumsum(self.samples)])
        self.blocks = int(self.first_block[-1])
        self.size = int(self.first_id[-1])
        # samples of each block (2 bytes a block, 4 past 65,535 samples; built once): block k of a shard of n
        # samples in m blocks holds samples [k n // m, (k + 1) n // m)
        k = np.arange(self.blocks, dtype=np.int64) - np.repeat(self.first_block[:-1], self.per_shard)
        n, m = np.repeat(self.samples, self.per_shard), np.repeat(self.per_shard, self.per_shard)
        counts = (k + 1) * n // m - k * n // m
        self.block_samples = counts.astype(np.uint16 if counts.size and counts.max() < 1 << 16 else np.uint32)

    def spans(self, blocks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, lo, hi) of each block: samples [lo, hi) of that shard."""
        blocks = np.asarray(blocks, dtype=np.int64)
        shard = np.searchsorted(self.first_block, blocks, side="right") - 1
        k, m, n = blocks - self.first_block[shard], self.per_shard[shard], self.samples[shard]
        return shard, k * n // m, (k + 1) * n // m


@dataclass
class Segments:
    """A partition's reads, in stream order: samples [lo, hi) of shard `shard`, ids from `first_id` on."""

    shard: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    first_id: np.ndarray = field(init=False)

    def __len__(self) -> int:
        return len(self.shard)


class BlockEpoch:
    """One epoch's shuffled blocks and where each canonical partition's samples lie in them."""

    def __init__(self, table: BlockTable, seed: int, epoch: int, partitions: int):
        self.table, self.seed, self.epoch, self.partitions = table, seed, epoch, partitions
        self._perm = KeyedPermutation(table.blocks, stable_int("blocks", seed, epoch))
        # samples up to and including every MARK_SLOTS-th slot (a slot in between is found by evaluating the
        # permutation over one window): an epoch's build is one pass over the blocks, a million at a time,
        # and keeps 8 bytes per MARK_SLOTS blocks
        self._marks = np.empty(-(-table.blocks // MARK_SLOTS), dtype=np.int64)
        total, step = 0, MARK_SLOTS << 14
        for begin in range(0, table.blocks, step):
            ends = np.cumsum(self._sizes(begin, min(begin + step, table.blocks))) + total
            full = ends[MARK_SLOTS - 1 :: MARK_SLOTS]
            self._marks[begin // MARK_SLOTS : begin // MARK_SLOTS + len(full)] = full
            if len(ends) % MARK_SLOTS:  # the last window, short
                self._marks[-1] = ends[-1]
            total = int(ends[-1])

    def _sizes(self, begin: int, end: int) -> np.ndarray:
        """Samples of the blocks at slots [begin, end)."""
        return self.table.block_samples[self._perm(np.arange(begin, end))].astype(np.int64)

    def _slot_of(self, position: int) -> tuple[int, int]:
        """(slot, samples before that slot) of a position in the shuffled blocks' sequence."""
        window = int(np.searchsorted(self._marks, position, side="right"))
        begin = window * MARK_SLOTS
        before = int(self._marks[window - 1]) if window else 0
        ends = np.cumsum(self._sizes(begin, min(begin + MARK_SLOTS, self.table.blocks))) + before
        slot = int(np.searchsorted(ends, position, side="right"))
        return begin + slot, int(ends[slot - 1]) if slot else before

    def partition_range(self, q: int) -> tuple[int, int]:
        """Partition q's samples, as positions [begin, end) in the shuffled blocks' sequence."""
        size = self.table.size
        return q * size // self.partitions, (q + 1) * size // self.partitions

    def segments(self, q: int) -> Segments:
        """Partition q's reads: its blocks, the first and last cut to its range."""
        begin, end = self.partition_range(q)
        if begin == end:
            empty = np.zeros(0, dtype=np.int64)
            segments = Segments(empty, empty, empty)
            segments.first_id = empty
            return segments
        first, before = self._slot_of(begin)
        last, _ = self._slot_of(end - 1)
        shard, lo, hi = self.table.spans(self._perm(np.arange(first, last + 1)))
        sizes = hi - lo
        slot_begin = before + np.cumsum(sizes) - sizes  # position of each block's first sample
        lo = lo + np.maximum(0, begin - slot_begin)
        hi = hi - np.maximum(0, slot_begin + sizes - end)
        segments = Segments(shard, lo, hi)
        segments.first_id = self.table.first_id[shard] + lo
        return segments


def lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def resolve_partitions(partitions: int, world_size: int, grad_accum_steps: int, workers: int) -> int:
    """`data.canonical_partitions`; 0: lcm(world, SAME_ORDER_RANKS) x lcm(accumulation, workers), so 1, 2, 4 and 8
    ranks (one node, or a part of it) share one order and resume each other's positions exactly, and a world
    that is a multiple of 8 has exactly one partition per worker's turn (no more buffers than it needs)."""
    step = world_size * lcm(grad_accum_steps, max(1, workers))
    if partitions == 0:
        return lcm(world_size, SAME_ORDER_RANKS) * lcm(grad_accum_steps, max(1, workers))
    if partitions % step:
        raise MsaDistError(
            f"data.canonical_partitions={partitions} must be a multiple of world size x lcm(accumulation steps, "
            f"workers) = {world_size} x lcm({grad_accum_steps}, {max(1, workers)}) = {step}, so that every "
            "partition is read by one loader worker: pick such a count (docs/data-scale.md)"
        )
    return partitions


@dataclass(frozen=True)
class BlockTrainPlan(TrainPlan):
    """A rank's micro batches in blocks mode: which partition and piece each one is (the samples come
    from that partition's shuffle buffer, block_reads.py)."""

    table: BlockTable | None = field(default=None, compare=False)
    partitions: int = 1
    block_bytes: int = 0
    buffer_samples: int = 1
    read_ahead_blocks: int = 1

    @property
    def batches_per_epoch(self) -> int:
        pieces = self.num_samples // self.partitions // self.batch_size  # every partition has this many
        full = pieces * self.partitions // self.world_size  # whole global batches: P divides into them
        return full if self.max_batches_per_epoch is None else min(full, self.max_batches_per_epoch)

    def piece(self, batch: int) -> tuple[int, int]:
        """(partition, piece of its stream) of this rank's micro batch `batch` of an epoch."""
        step, micro = divmod(batch, self.grad_accum_steps)
        g = (step * self.grad_accum_steps + micro) * self.world_size + self.rank
        return g % self.partitions, g // self.partitions

    def order(self, epoch: int) -> BlockEpoch:
        return BlockEpoch(self.table, self.seed, epoch, self.partitions)

    def ids(self, order, batch: int) -> np.ndarray:
        raise NotImplementedError("blocks mode: a batch's ids come from its partition's shuffle buffer")


def block_key(plan: BlockTrainPlan) -> dict:
    """What a blocks-mode position depends on besides the split and seed (a TrainStream's order key)."""
    return {
        "blocks": BLOCKS_VERSION,
        "batch_size": plan.batch_size,
        "canonical_partitions": plan.partitions,
        "block_bytes": plan.block_bytes,
        "shuffle_buffer_samples": plan.buffer_samples,
    }


def train_read_mode(cfg, shards: list[dict]) -> str:
    """`data.read_mode` resolved for a train split: auto reads a split of more than `blocks_above_shards`
    shards in blocks (there, chunks cost an index read per chunk: docs/data-scale.md), unless resampled
    or length buckets are on (chunks mode only)."""
    if cfg.read_mode != "auto":
        return cfg.read_mode
    chunks_only = cfg.resampled or cfg.length_bucket_batches > 1
    return "blocks" if len(shards) > cfg.blocks_above_shards and not chunks_only else "chunks"


def block_train_plan(cfg, shards: list[dict], spec, **kw) -> BlockTrainPlan:
    """The blocks-mode plan of one rank (cfg: the data section; shards: the split's manifest entries)."""
    if cfg.resampled or cfg.length_bucket_batches > 1:
        raise MsaDistError(
            "data.read_mode=blocks reads each block once per epoch in its own order: set data.resampled=false "
            "and data.length_bucket_batches=0"
        )
    table = BlockTable(shard_column(shards, "samples"), shard_column(shards, "bytes"), cfg.block_bytes)
    partitions = resolve_partitions(cfg.canonical_partitions, spec.world_size, spec.grad_accum_steps, cfg.workers)
    return BlockTrainPlan(
        table.size,
        0,
        False,
        spec.seed,
        spec.batch_size,
        spec.grad_accum_steps,
        spec.rank,
        spec.world_size,
        first_epoch=spec.epoch,
        table=table,
        partitions=partitions,
        block_bytes=cfg.block_bytes,
        buffer_samples=cfg.shuffle_buffer_samples,
        read_ahead_blocks=cfg.block_read_ahead,
        **kw,
    )
