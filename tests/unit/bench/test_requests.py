"""bench/requests.py: the requests one blocks-mode epoch makes, counted by the HTTP server, equal what the
planner (plan_blocks.epoch_reads) predicts for the same split and layout: deterministic counts."""

from __future__ import annotations

import pytest

from msa_dist.bench.requests import run_requests_bench
from msa_dist.config.data_section import DataConfig
from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """320 train samples in 20 shards of 16 (about 60 KiB each: 4 blocks of 16 KiB)."""
    root = tmp_path_factory.mktemp("requests")
    raw = write_synthetic_dataset(root / "raw", n_labelled=340, n_test=0, image_px=16)
    build_shards(raw, root / "shards", val_fraction=0.06, seed=0, shard_size=16)
    return root / "shards"


@pytest.mark.parametrize(
    ("world", "workers", "block_bytes", "cache_bytes"),
    [(1, 2, 16384, None), (2, 2, 16384, None), (1, 1, 65536, None), (2, 2, 16384, 12000)],
)
def test_counted_requests_equal_the_plan(split, world, workers, block_bytes, cache_bytes):
    cfg = DataConfig(
        image_size=16, resize_size=16, max_length=8, workers=workers, read_mode="blocks", block_bytes=block_bytes,
        shuffle_buffer_samples=12, canonical_partitions=8,
    )  # fmt: skip
    got = run_requests_bench(str(split), cfg, world, batch_size=4, seed=1, cache_bytes=cache_bytes)
    assert got["indexes_preloaded"] == (cache_bytes is None)
    assert got["samples_read"] == 320
    assert got["counted"]["data"] == got["planned"]["data"]
    assert got["counted"]["index"] == got["planned"]["index"]
    assert got["counted"]["data"] >= 20 * 65536 // block_bytes  # a block at least per read
