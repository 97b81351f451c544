"""Which samples an epoch holds, in which order, and which of them each rank and worker reads.

The rule, the same on every rank (no rank needs to talk to another):
- the split's samples (ids 0..N-1 in shard order) are cut into chunks of `data.chunk_samples`
  consecutive ids (the last chunk may be short; a chunk may straddle two shards: two requests);
  the epoch's order is the chunks shuffled by (seed, epoch) alone, so it does not depend on the
  world size or the worker count. `data.resampled`: each chunk slot draws a chunk with replacement
  (the last chunk then wraps around to the split's first samples);
- the shuffle is a keyed bijection computed on demand (a Feistel network over chunk ids with
  cycle walking, `KeyedPermutation`), so the sample at any position costs a few integer operations
  and no process holds an array of the split: memory and start-up are O(1) in N (docs/data-scale.md);
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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ORDER_VERSION = 2  # bumped whenever the rule above changes: an old position then restarts its epoch
FEISTEL_ROUNDS = 6
_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def stable_int(*parts) -> int:
    """A 64-bit integer from `parts`, the same in every process and Python run."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit flips about half the output bits (uint64 arrays wrap)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class KeyedPermutation:
    """A pseudo-random bijection of 0..n-1 chosen by `key`, evaluated element by element.

    A balanced Feistel network permutes 0..4^h-1 (the smallest >= n); values that land at or past
    n are sent through it again (cycle walking) until they land inside, which keeps a bijection
    of 0..n-1. Fewer than 4 passes on average, since 4^h < 4n."""

    def __init__(self, n: int, key: int):
        if n < 1:
            raise ValueError(f"a permutation of {n} elements")
        self.n = n
        self.half_bits = max(1, -(-max(n - 1, 1).bit_length() // 2))
        self._mask = np.uint64((1 << self.half_bits) - 1)
        self._keys = [np.uint64(stable_int("feistel", key, r)) for r in range(FEISTEL_ROUNDS)]

    def _round(self, half: np.ndarray, key: np.uint64) -> np.ndarray:
        return _mix((half ^ key) * _GAMMA) & self._mask

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        shift = np.uint64(self.half_bits)
        left, right = x >> shift, x & self._mask
        for key in self._keys:
            left, right = right, left ^ self._round(right, key)
        return (left << shift) | right

    def _decrypt(self, x: np.ndarray) -> np.ndarray:
        shift = np.uint64(self.half_bits)
        left, right = x >> shift, x & self._mask
        for key in reversed(self._keys):
            left, right = right ^ self._round(left, key), left
        return (left << shift) | right

    def _walk(self, x, step) -> np.ndarray:
        x = step(np.asarray(x, dtype=np.uint64).ravel().copy())
        todo = np.flatnonzero(x >= self.n)
        while todo.size:  # ends: the cycle of an in-range value returns inside the range
            x[todo] = step(x[todo])
            todo = todo[x[todo] >= self.n]
        return x.astype(np.int64)

    def __call__(self, x) -> np.ndarray:
        """The images of `x` (values in 0..n-1)."""
        return self._walk(x, self._encrypt)

    def inverse(self, y) -> np.ndarray:
        """The x with self(x) == y."""
        return self._walk(y, self._decrypt)


class EpochOrder:
    """Sample ids (0..N-1 in shard order) of one epoch, by position, computed on demand: the object
    holds a few integers whatever N is."""

    def __init__(
        self, samples: int | Sequence[int], chunk_samples: int, seed: int, epoch: int, resampled: bool = False
    ):
        self.size = int(samples) if np.ndim(samples) == 0 else int(np.sum(samples, dtype=np.int64))
        if chunk_samples < 1:
            raise ValueError(f"data.chunk_samples must be >= 1, got {chunk_samples}")
        self.chunk_samples, self.resampled = chunk_samples, resampled
        self.chunks = -(-self.size // chunk_samples)
        self.tail = self.size - (self.chunks - 1) * chunk_samples  # samples of the last chunk
        self._key = np.uint64(stable_int("order", seed, epoch))
        self._perm: KeyedPermutation | None = None
        if self.chunks and not resampled:
            self._perm = KeyedPermutation(self.chunks, int(self._key))
            # the short last chunk sits at some slot of the order: positions after it shift by its gap
            self._tail_end = int(self._perm.inverse([self.chunks - 1])[0]) * chunk_samples + self.tail

    def ids(self, begin: int, end: int) -> np.ndarray:
        """The sample ids at positions [begin, end) of the epoch."""
        assert 0 <= begin <= end <= self.size, (begin, end, self.size)
        pos = np.arange(begin, end, dtype=np.int64)
        c = self.chunk_samples
        if self.resampled:
            slot, within = np.divmod(pos, c)
            chunk = _mix(slot.astype(np.uint64) * _GAMMA + self._key) % np.uint64(self.chunks)
            return (chunk.astype(np.int64) * c + within) % self.size
        if self._perm is None:
            return pos
        slot, within = np.divmod(pos + np.where(pos >= self._tail_end, c - self.tail, 0), c)
        return self._perm(slot) * c + within


@dataclass(frozen=True)
class TrainPlan:
    """One rank's micro batches from (first_epoch, first_batch) on: which epoch and sample ids each is."""

    num_samples: int  # samples in the split
    chunk_samples: int
    resampled: bool
    seed: int
    batch_size: int
    grad_accum_steps: int
    rank: int
    world_size: int
    first_epoch: int = 0
    first_batch: int = 0  # micro batches of first_epoch this rank already made (a resumed run)
    end_epoch: int | None = None  # None: endless
    max_batches_per_epoch: int | None = None  # train.max_steps_per_epoch, in micro batches

    @property
    def round_samples(self) -> int:
        """Samples of one micro round: one micro batch on every rank."""
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        """Micro batches each rank makes in an epoch: whole global batches only."""
        global_batch = self.round_samples * self.grad_accum_steps
        full = self.num_samples // global_batch * self.grad_accum_steps
        return full if self.max_batches_per_epoch is None else min(full, self.max_batches_per_epoch)

    def locate(self, t: int) -> tuple[int, int] | None:
        """(epoch, micro batch) of the t-th micro batch since the start; None past the end."""
        per_epoch = self.batches_per_epoch
        t += self.first_batch
        epoch, batch = self.first_epoch + t // per_epoch, t % per_epoch
        if self.end_epoch is not None and epoch >= self.end_epoch:
            return None
        return epoch, batch

    def order(self, epoch: int) -> EpochOrder:
        return EpochOrder(self.num_samples, self.chunk_samples, self.seed, epoch, self.resampled)

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
    def samples(self) -> int:
        """This rank's sample count: its batches are full but for the split's last batch."""
        total = -(-self.num_samples // self.batch_size)
        if self.batches == 0:
            return 0
        last_is_mine = (total - 1) % self.world_size == self.rank
        return self.batches * self.batch_size - (total * self.batch_size - self.num_samples if last_is_mine else 0)

    @property
    def most_batches(self) -> int:
        """The largest count over all ranks: the forward passes every rank must join."""
        return self.batches_of(0)

    def ids(self, t: int) -> np.ndarray | None:
        """Sample ids of this rank's t-th batch; None past its last."""
        if t >= self.batches:
            return None
        begin = (self.rank + t * self.world_size) * self.batch_size
        return np.arange(begin, min(begin + self.batch_size, self.num_samples))
