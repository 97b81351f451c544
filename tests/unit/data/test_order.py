"""The on-demand epoch order (data/loading/order.py): a permutation of the split at every size, seed and
epoch, computed from a few integers, and the same slices whatever the batch layout asks for."""

from __future__ import annotations

import numpy as np
import pytest

from msa_dist.data.loading.order import EpochOrder, KeyedPermutation, TrainPlan


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 1000, 4096, 4097, 65_535, 999_983])
def test_keyed_permutation_is_a_bijection_and_inverts(n):
    for key in (0, 1, 2**63 + 5):
        perm = KeyedPermutation(n, key)
        image = perm(np.arange(n))
        assert np.array_equal(np.sort(image), np.arange(n))
        assert np.array_equal(perm.inverse(image), np.arange(n))


@pytest.mark.parametrize(
    "samples,chunk",
    [(1, 4), (3, 4), (72, 4), (73, 4), (100_003, 4), (250_000, 7), (1_000_000, 4), (524_288, 1), (999_999, 64)],
)
def test_every_position_of_an_epoch_is_a_distinct_sample(samples, chunk):
    """Exhaustive: the ids at positions 0..N-1 are 0..N-1 once each, for several seeds and epochs,
    non-power-of-two sizes and a short last chunk."""
    orders = []
    for seed in (0, 7):
        for epoch in (0, 1, 2):
            order = EpochOrder(samples, chunk, seed, epoch)
            ids = order.ids(0, samples)
            assert order.size == samples and np.array_equal(np.sort(ids), np.arange(samples))
            orders.append(ids)
    if samples > 100:
        assert len({ids.tobytes() for ids in orders}) == len(orders)  # every (seed, epoch) differs


def test_chunks_are_runs_of_consecutive_ids_and_any_slice_agrees_with_the_whole():
    order = EpochOrder([13, 29, 6, 24], 4, seed=3, epoch=1)  # 72 samples: 18 chunks, none short
    whole = order.ids(0, 72)
    runs = whole.reshape(-1, 4)
    assert (np.diff(runs, axis=1) == 1).all() and (runs[:, 0] % 4 == 0).all()
    for begin, end in ((0, 5), (5, 30), (30, 72), (71, 72), (10, 10)):
        assert np.array_equal(order.ids(begin, end), whole[begin:end])
    short = EpochOrder(73, 4, seed=3, epoch=1).ids(0, 73)
    tail = int(np.flatnonzero(short == 72)[0])  # the one-sample last chunk sits somewhere, alone
    assert (tail == 0 or short[tail - 1] % 4 == 3) and (tail == 72 or short[tail + 1] % 4 == 0)


def test_resampled_order_draws_whole_chunks_with_replacement():
    order = EpochOrder(1001, 4, seed=0, epoch=0, resampled=True)
    ids = order.ids(0, 1001)
    assert ids.min() >= 0 and ids.max() < 1001
    assert len(np.unique(ids)) < 1001  # some chunks drawn twice, some never
    starts = ids[:1000].reshape(-1, 4)[:, 0]
    assert (starts % 4 == 0).all()
    assert not np.array_equal(ids, EpochOrder(1001, 4, seed=0, epoch=1, resampled=True).ids(0, 1001))


def test_an_order_for_a_billion_samples_is_a_few_integers():
    order = EpochOrder(10**9, 4, seed=1, epoch=0)
    assert order.chunks == 250_000_000 and not any(isinstance(v, np.ndarray) for v in vars(order).values())
    ids = order.ids(10**9 - 1000, 10**9)
    assert len(np.unique(ids)) == 1000 and ids.min() >= 0 and ids.max() < 10**9


def test_the_ranks_of_a_plan_share_out_each_global_batch():
    plans = [TrainPlan(1000, 4, False, 5, batch_size=8, grad_accum_steps=2, rank=r, world_size=3) for r in range(3)]
    assert plans[0].batches_per_epoch == 1000 // 48 * 2
    order = plans[0].order(0)
    got = np.concatenate([p.ids(order, b) for b in range(plans[0].batches_per_epoch) for p in plans])
    assert np.array_equal(got, order.ids(0, len(got)))
