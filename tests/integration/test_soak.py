"""The short fault soak (K=3) that CI runs: a random rank SIGKILLed three times, once during a
checkpoint write; the run ends bit for bit as the uninterrupted one, metrics.jsonl line by line.
Slow (~1-2 min on 2 cores); `python -m msa_dist.bench.soak` runs longer soaks."""

from __future__ import annotations

import json

import pytest
from dist_utils import write_config

from msa_dist.bench import soak
from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_soak_three_kills_ends_as_the_uninterrupted_run(tmp_path):
    raw = write_synthetic_dataset(tmp_path / "raw", n_labelled=120, n_test=4, image_px=32)
    build_shards(raw, tmp_path / "shards", val_fraction=0.2, seed=0, shard_size=40)
    # log every 3 steps, save every 2: resumes land inside a log window (what made soaks differ)
    config = write_config(
        tmp_path / "c.yaml",
        tmp_path / "shards",
        "train.batch_size=4",
        "train.epochs=4",
        "checkpoint.every_steps=2",
        "checkpoint.keep_last=2",
        "log.every_steps=3",
    )
    result = soak.soak(str(config), tmp_path / "soak", kills=3, seed=0, overrides=[])
    assert result["ok"], json.dumps(result, indent=1)
    assert result["resumes_logged"] >= 1 and result["latest_checks"] > 0
