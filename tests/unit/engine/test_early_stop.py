"""Early stopping (train.early_stop, engine/early_stop.py): the decision, and its count across a resume."""

from __future__ import annotations

import json
import shutil

from run_utils import tiny_config

from msa_dist.config.schema import EarlyStopConfig
from msa_dist.engine.early_stop import EarlyStopper
from msa_dist.engine.trainer import train


def test_it_stops_after_patience_evaluations_without_an_improvement_beyond_min_delta():
    stopper = EarlyStopper(EarlyStopConfig(patience=2, metric="accuracy", min_delta=0.01))
    decisions = [stopper.should_stop({"accuracy": a}, epoch) for epoch, a in enumerate([0.5, 0.6, 0.605, 0.7], 1)]
    assert decisions == [False, False, False, False] and stopper.best == 0.7  # 0.605 is within min_delta
    assert stopper.should_stop(None, 5) is False  # no evaluation this epoch: nothing counts
    assert [stopper.should_stop({"accuracy": 0.69}, e) for e in (6, 7)] == [False, True]
    assert stopper.summary() == {"metric": "accuracy", "best": 0.7, "epoch": 7, "patience": 2, "by": "early_stop"}
    restored = EarlyStopper(stopper.cfg)
    restored.load_state_dict(json.loads(json.dumps(stopper.state_dict())))
    assert restored.state_dict() == stopper.state_dict()
    off = EarlyStopper(EarlyStopConfig())  # patience 0: never
    assert not any(off.should_stop({"macro_f1": 0.0}, e) for e in range(10))
    loss = EarlyStopper(EarlyStopConfig(patience=1, metric="loss", min_delta=0.01))  # lower is better
    assert [loss.should_stop({"loss": v}, e) for e, v in enumerate([1.0, 0.9, 0.895], 1)] == [False, False, True]
    assert loss.summary()["best"] == 0.9
    pruned = EarlyStopper(EarlyStopConfig(), judge=lambda metrics, epoch: epoch == 2)  # a search's pruner
    assert [pruned.should_stop({"macro_f1": 0.5}, e) for e in (1, 2)] == [False, True]
    assert pruned.summary()["by"] == "pruned" and pruned.summary()["epoch"] == 2


def _step_dirs(run):
    return sorted(p for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))


def test_a_run_resumed_from_a_checkpoint_stops_at_the_same_step_as_an_uninterrupted_one(shard_dir, tmp_path):
    # min_delta=1: no evaluation after the first improves, so with patience 2 the run stops after epoch 3 of 6.
    # A resume from epoch 2's checkpoint stops there too only if the count was saved (afresh it would be epoch 5).
    overrides = (
        "train.epochs=6",
        "train.max_steps_per_epoch=1",
        "train.early_stop.patience=2",
        "train.early_stop.min_delta=1.0",
        "checkpoint.keep_last=10",
    )
    whole = train(tiny_config(shard_dir, *overrides), tmp_path / "whole")
    assert whole["status"] == "finished" and whole["early_stop"]["epoch"] == 3 and whole["step"] == 3
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "eval"] == [1, 2, 3]
    assert all(r["loss"] > 0 for r in records if r["type"] == "eval")  # the val cross-entropy, for metric=loss
    assert [r["step"] for r in records if r["type"] == "early_stop"] == [3]

    shutil.copytree(tmp_path / "whole", tmp_path / "killed")  # as if killed right after epoch 2's save
    epoch_two = _step_dirs(tmp_path / "killed")[1]
    for later in _step_dirs(tmp_path / "killed")[2:]:
        shutil.rmtree(later)
    resumed = train(tiny_config(shard_dir, *overrides), tmp_path / "killed", resume=str(epoch_two))
    assert (resumed["step"], resumed["early_stop"]) == (whole["step"], whole["early_stop"])
    again = train(tiny_config(shard_dir, *overrides), tmp_path / "killed", resume="auto")  # a stopped run stays so
    assert again["step"] == whole["step"] and "val" not in again
