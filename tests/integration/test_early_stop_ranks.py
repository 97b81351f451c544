"""Early stopping under DDP (2 gloo ranks): every rank gets the same val metrics, so every rank stops
after the same epoch (a rank going on alone would hang in the next epoch's collectives).
Single process and the resume: tests/unit/engine/test_early_stop.py."""

from __future__ import annotations

import pytest
from dist_utils import check, records, run, torchrun_cmd, write_config

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_every_rank_stops_after_the_same_evaluation(tmp_path, shard_dir):
    overrides = ("train.epochs=5", "train.batch_size=2", "train.max_steps_per_epoch=2", "backend.name=ddp")
    stop = ("train.early_stop.patience=1", "train.early_stop.min_delta=1.0")  # no evaluation after the first improves
    config = write_config(tmp_path / "c.yaml", shard_dir, *overrides, *stop)
    run_dir = tmp_path / "run"
    result = check(run(torchrun_cmd(["train", "--config", str(config), "--run-dir", str(run_dir)]), timeout=300))
    assert [r["epoch"] for r in records(run_dir, "eval")] == [1, 2]
    assert [(r["epoch"], r["step"]) for r in records(run_dir, "early_stop")] == [(2, 4)]
    assert "early stop: val macro_f1 did not improve for 1 evaluations" in result.stdout
