"""A bounded, deterministic shuffle buffer over sample ids: one canonical partition's stream.

Samples enter in read order (a partition's blocks, one after another); the buffer fills to `capacity`
samples, then each emission takes the sample at a random slot and puts the next incoming one in its place
(once the input is spent the last slot fills the gap). The random slots come from one generator keyed
by (seed, epoch, partition), so the stream is a function of those and of the blocks alone; it works on
ids, not bytes, so a resumed worker replays it to where it was (`skip`) without reading anything, and
then knows which samples of the blocks it had read are still to come (`pending`): only those blocks are
read again. A sample is emitted at most `capacity` + one block after it was read: the buffer bounds the
memory (capacity samples plus the blocks in flight).
"""

from __future__ import annotations

import numpy as np

from msa_dist.data.loading.blocks import Segments
from msa_dist.data.loading.order import stable_int

_DRAWS = 4096  # random numbers drawn at a time


class ShuffleBuffer:
    """The emission order of one partition's sample ids."""

    def __init__(self, segments: Segments, capacity: int, seed: int, epoch: int, partition: int):
        self.segments, self.capacity = segments, max(1, capacity)
        self.sizes = (segments.hi - segments.lo).tolist()
        self.first_ids = segments.first_id.tolist()
        self.total = int(sum(self.sizes))
        self.buffer: list[int] = []
        self.segment_of: dict[int, int] = {}  # id in the buffer -> its segment
        self.emitted = 0
        self._seg, self._within = 0, 0  # the next id to enter: offset `_within` of segment `_seg`
        self._rng = np.random.Generator(np.random.PCG64(stable_int("buffer", seed, epoch, partition)))
        self._draws: list[float] = []

    @property
    def entered(self) -> int:
        """Segments some of whose samples have entered the buffer."""
        return self._seg + (self._within > 0)

    def _next(self) -> int | None:
        """The next incoming id (now counted as entered), or None when the partition is spent."""
        if self._seg >= len(self.sizes):
            return None
        sample = self.first_ids[self._seg] + self._within
        self.segment_of[sample] = self._seg
        self._within += 1
        while self._seg < len(self.sizes) and self._within >= self.sizes[self._seg]:
            self._seg, self._within = self._seg + 1, 0
        return sample

    def _draw(self) -> float:
        if not self._draws:
            self._draws = self._rng.random(_DRAWS).tolist()[::-1]
        return self._draws.pop()

    def take(self, count: int) -> list[tuple[int, int]]:
        """The next `count` (id, segment) of the stream (fewer at its end)."""
        out = []
        for _ in range(min(count, self.total - self.emitted)):
            while len(self.buffer) < self.capacity:
                sample = self._next()
                if sample is None:
                    break
                self.buffer.append(sample)
            slot = int(self._draw() * len(self.buffer))
            sample = self.buffer[slot]
            incoming = self._next()  # takes the emitted sample's slot
            if incoming is None:
                self.buffer[slot] = self.buffer[-1]
                self.buffer.pop()
            else:
                self.buffer[slot] = incoming
            out.append((sample, self.segment_of.pop(sample)))
            self.emitted += 1
        return out

    def skip(self, count: int) -> None:
        """Advance past `count` emissions without reading (a resumed position)."""
        while count > 0:
            done = len(self.take(min(count, 65536)))
            if not done:
                return
            count -= done

    def pending(self) -> dict[int, list[int]]:
        """Segments already entered -> offsets (within the segment) still to be emitted: the buffer's
        samples, and the rest of a segment that has only partly entered."""
        out: dict[int, list[int]] = {}
        for sample in self.buffer:
            seg = self.segment_of[sample]
            out.setdefault(seg, []).append(sample - self.first_ids[seg])
        if self._within > 0:
            out.setdefault(self._seg, []).extend(range(self._within, self.sizes[self._seg]))
        return out
