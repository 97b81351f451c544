"""Which samples an epoch holds, in which order, and which of them each rank and worker reads.

The rule, the same on every rank (no rank needs to talk to another):
- each shard is cut into chunks of `data.chunk_samples` consecutive samples; the epoch's order is
  the chunks of the whole split shuffled by (seed, epoch) alone (drawn with replacement when
  `data.resampled`). So the order does not depend on the world size or the worker count;
- a global batch (batch_size x grad_accum_steps x world_size samples) is the next slice of that
  order; within it, micro round a (of grad_accum_steps) gives rank r the slice
  [(a * world_size + r) * batch_size, ... + batch_size). The epoch ends at its last whole global
  batch; every rank makes the same number of micro batches;
- a rank's DataLoader workers take its micro batches round-robin (worker w: t = w, w + W, ...,
  counted from where the stream started), as the DataLoader hands them out;
- evaluation reads the split in stored order, batches of batch_size dealt round-robin to ranks.
A position in an epoch is a count of samples, so it carries over to any layout whose global batch
divides it (see stream.py's `load_state_dict`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

ORDER_VERSION = 1  # bumped whenever the rule above changes: an old position then restarts its epoch


def stable_int(*parts) -> int:
    """A 64-bit integer from `parts`, the same in every process and Python run."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class EpochOrder:
    """Sample ids (0..N-1 in shard order) of one epoch, by position."""

    def __init__(self, shard_sizes: list[int], chunk_samples: int, seed: int, epoch: int, resampled: bool = False):
        sizes = np.asarray(shard_sizes, dtype=np.int64)
        shard_start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        per_shard = -(-sizes // chunk_samples)
        shard_of_chunk = np.repeat(np.arange(len(sizes)), per_shard)
        within = np.arange(int(per_shard.sum())) - np.repeat(np.cumsum(per_shard) - per_shard, per_shard)
        starts = shard_start[shard_of_chunk] + within * chunk_samples
        lengths = np.minimum(chunk_samples, sizes[shard_of_chunk] - within * chunk_samples)
        rng = np.random.default_rng(stable_int("order", seed, epoch))
        n = len(starts)
        # with replacement: twice the draws, so that short chunks (at shard ends) still fill N positions
        pick = rng.integers(0, n, 2 * n) if resampled else rng.permutation(n)
        self.chunk_start, chunk_len = starts[pick], lengths[pick]
        self.cum = np.concatenate([[0], np.cumsum(chunk_len)])
        self.size = int(self.cum[-1])

    def ids(self, begin: int, end: int) -> np.ndarray:
        """The sample ids at positions [begin, end) of the epoch."""
        pos = np.arange(begin, end)
        chunk = np.searchsorted(self.cum, pos, side="right") - 1
        return self.chunk_start[chunk] + (pos - self.cum[chunk])


@dataclass(frozen=True)
class TrainPlan:
    """One rank's micro batches from (first_epoch, first_batch) on: which epoch and sample ids each is."""
    shard_sizes: tuple[int, ...]
    chunk_samples: int
    resampled: bool
    seed: int
    batch_size: int
    grad_accum_steps: int
    rank: int
    world_size: int
    first_epoch: int = 0
    first_batch: int = 0  # micro batches of first_epoch this rank already made (a resumed run)
    end_epoch: Optional[int] = None  # None: endless
    max_batches_per_epoch: Optional[int] = None  # train.max_steps_per_epoch, in micro batches

    @property
    def round_samples(self) -> int:
        """Samples of one micro round: one micro batch on every rank."""
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        """Micro batches each rank makes in an epoch: whole global batches only."""
        global_batch = self.round_samples * self.grad_accum_steps
        full = sum(self.shard_sizes) // global_batch * self.grad_accum_steps
        return full if self.max_batches_per_epoch is None else min(full, self.max_batches_per_epoch)

    def locate(self, t: int) -> Optional[tuple[int, int]]:
        """(epoch, micro batch) of the t-th micro batch since the start; None past the end."""
        per_epoch = self.batches_per_epoch
        t += self.first_batch
        epoch, batch = self.first_epoch + t // per_epoch, t % per_epoch
        if self.end_epoch is not None and epoch >= self.end_epoch:
            return None
        return epoch, batch

    def order(self, epoch: int) -> EpochOrder:
        return EpochOrder(list(self.shard_sizes), self.chunk_samples, self.seed, epoch, self.resampled)

    def ids(self, order: EpochOrder, batch: int) -> np.ndarray:
        """Sample ids of this rank's micro batch `batch` of the epoch `order` is for."""
        begin = batch * self.round_samples + self.rank * self.batch_size
        return order.ids(begin, begin + self.batch_size)


@dataclass(frozen=True)
class EvalPlan:
    """One rank's evaluation batches: the split in stored order, batches dealt round-robin to ranks."""
    num_samples: int
    batch_size: int
    rank: int = 0
    world_size: int = 1

    def batches_of(self, rank: int) -> int:
        return len(range(rank, -(-self.num_samples // self.batch_size), self.world_size))

    @property
    def batches(self) -> int:
        """This rank's batch count (ranks differ by at most one)."""
        return self.batches_of(self.rank)

    @property
    def most_batches(self) -> int:
        """The largest count over all ranks: the forward passes every rank must join."""
        return self.batches_of(0)

    def ids(self, t: int) -> Optional[np.ndarray]:
        """Sample ids of this rank's t-th batch; None past its last."""
        if t >= self.batches:
            return None
        begin = (self.rank + t * self.world_size) * self.batch_size
        return np.arange(begin, min(begin + self.batch_size, self.num_samples))
