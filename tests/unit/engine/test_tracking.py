"""Tracking (TensorBoard read back against metrics.jsonl, W&B offline); run_info.json: test_provenance.py;
on two ranks: tests/integration/test_two_ranks.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_utils import scalars, tiny_config

from msa_dist.common.errors import MsaDistError
from msa_dist.engine.trainer import train


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_tensorboard_scalars_match_metrics_jsonl(shard_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(shard_dir, "log.report_to=[tensorboard]"), run)
    series = scalars(run / "tensorboard")
    train_records = records(run, "train")
    assert train_records and all(r["data_wait"] is not None for r in train_records)
    for key in ("loss", "lr", "grad_norm", "samples_per_s", "data_wait"):
        expected = [(r["step"], r[key]) for r in train_records]
        got = series[f"train/{key}"]
        assert [s for s, _ in got] == [s for s, _ in expected]
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)
    evals = records(run, "eval")
    assert [s for s, _ in series["val/macro_f1"]] == [r["step"] for r in evals]
    assert [v for _, v in series["val/macro_f1"]] == pytest.approx([r["macro_f1"] for r in evals])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert len(acc.Images("val/confusion_matrix")) == len(evals)
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_resumed_run_continues_tensorboard_without_duplicate_steps(shard_dir, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(tiny_config(shard_dir, "log.report_to=[tensorboard]", "train.epochs=2"), full)
    # Same run stopped after epoch 1's checkpoint: train 2 epochs, then roll back to epoch 1
    # by resuming from its checkpoint, as a preempted run whose later steps were logged would.
    train(tiny_config(shard_dir, "log.report_to=[tensorboard]", "train.epochs=2", "checkpoint.keep_last=5"), cut)
    checkpoints = sorted((cut / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 2
    train(
        tiny_config(shard_dir, "log.report_to=[tensorboard]", "train.epochs=2", "checkpoint.keep_last=5"),
        cut,
        resume=str(checkpoints[0]),
    )
    got, want = scalars(cut / "tensorboard"), scalars(full / "tensorboard")
    steps = [s for s, _ in got["train/loss"]]
    assert steps == sorted(set(steps)) == [s for s, _ in want["train/loss"]]
    assert [s for s, _ in got["val/accuracy"]] == [s for s, _ in want["val/accuracy"]]
    assert [r["step"] for r in records(cut, "train")] == steps


def test_report_to_mistakes_are_one_line_errors(shard_dir, tmp_path, monkeypatch):
    with pytest.raises(MsaDistError, match="unknown tracker 'tensorbord'"):
        train(tiny_config(shard_dir, "log.report_to=[tensorbord]"), tmp_path / "a")
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # an import of it fails
    with pytest.raises(MsaDistError, match=r"pip install 'msa-dist\[wandb\]'"):
        train(tiny_config(shard_dir, "log.report_to=[wandb]"), tmp_path / "b")


def test_wandb_not_logged_in_is_a_one_line_error(shard_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    with pytest.raises(MsaDistError, match="not logged in"):
        train(tiny_config(shard_dir, "log.report_to=[wandb]"), tmp_path / "run")


def test_wandb_offline_run(shard_dir, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(tiny_config(shard_dir, "log.report_to=[wandb]", "train.epochs=1"), run)
    wandb.teardown()  # finish() leaves the write to wandb's service process; its shutdown completes it
    run_id = (run / "wandb_run_id").read_text().strip()
    offline = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1
    # The offline history is a binary record log (read by `wandb sync`); check that every train
    # record and the val metrics went into it, and the confusion matrix as one image per eval.
    history = next(offline[0].glob("*.wandb")).read_bytes()
    assert history.count(b"train/loss") >= len(records(run, "train")) and b"val/macro_f1" in history
    assert len(list(offline[0].glob("files/media/images/val/confusion_matrix_*.png"))) == len(records(run, "eval"))
