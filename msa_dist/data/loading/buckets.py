"""Length-bucketed training batches (`data.length_bucket_batches`): fewer padded text tokens.

A batch's texts are padded to its longest one, so a batch that mixes a 3-token text with a
60-token one pays for 57 pad tokens. With `data.length_bucket_batches = K > 1`, each rank's
batches of an epoch are taken K at a time (a window: batches kK .. kK+K-1; the epoch's last window
may be shorter); the window's samples are sorted by the byte size of their `txt` member (a proxy
for the token count, known from the shard index before anything is read), ties kept in order,
cut into batches of the same sizes, and those batches come out in an order keyed by
(seed, epoch, rank, world size, window).

What stays: each rank's samples of an epoch and its step count (only the grouping into batches
and their order inside a window change); the batches are a pure function of (seed, epoch, rank,
world size, batch), so any worker count gives them and a resumed run on the same layout sees the
same batches as an uninterrupted one. What it costs: batches are less random within a window
(a batch holds texts of similar length, not a uniform draw of the window; larger K: less padding,
less mixing), and a batch's samples come from several of the window's chunks (more, smaller
reads on a remote store). Evaluation is untouched: it reads the split in stored order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from msa_dist.data.loading.order import EpochOrder, KeyedPermutation, TrainPlan, stable_int


def bucket_window(batches: Sequence[np.ndarray], text_bytes: np.ndarray, key: int) -> list[np.ndarray]:
    """The window `batches` regrouped: its samples sorted by (text_bytes, position), cut into
    batches of the same sizes, in an order chosen by `key`. `text_bytes[i]` belongs to the i-th id
    of the concatenated batches."""
    sizes = [len(b) for b in batches]
    ids = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert len(text_bytes) == len(ids), (len(text_bytes), len(ids))
    # a stable sort: equal sizes keep their order in the window, so ties never depend on the sort
    by_length = ids[np.argsort(np.asarray(text_bytes), kind="stable")]
    groups = np.split(by_length, np.cumsum(sizes)[:-1])
    if len(groups) < 2:
        return groups
    # without this the window's shortest batch would always come first: a length curriculum
    shuffled = KeyedPermutation(len(groups), key)(np.arange(len(groups)))
    return [groups[g] for g in shuffled.tolist()]


class WindowBuckets:
    """One rank's training batch ids, regrouped by text length within windows of `window_batches`
    consecutive batches. Keeps the last window made: a worker's neighbouring batches reuse it."""

    def __init__(self, plan: TrainPlan, text_bytes: Callable[[np.ndarray], np.ndarray], window_batches: int):
        assert window_batches > 1, window_batches
        self.plan, self.text_bytes, self.window_batches = plan, text_bytes, window_batches
        self._window: tuple[tuple[int, int], list[np.ndarray]] | None = None

    def key(self, epoch: int, window: int) -> int:
        plan = self.plan
        return stable_int("length buckets", plan.seed, epoch, plan.rank, plan.world_size, window)

    def ids(self, order: EpochOrder, epoch: int, batch: int) -> np.ndarray:
        """Sample ids of this rank's micro batch `batch` of `epoch` (`order` is that epoch's order)."""
        window, slot = divmod(batch, self.window_batches)
        if self._window is None or self._window[0] != (epoch, window):
            first = window * self.window_batches
            last = min(first + self.window_batches, self.plan.batches_per_epoch)
            batches = [self.plan.ids(order, b) for b in range(first, last)]
            text_bytes = self.text_bytes(np.concatenate(batches))
            self._window = (epoch, window), bucket_window(batches, text_bytes, self.key(epoch, window))
        return self._window[1][slot]
