"""`msa-dist distill`: teachers, their averaged probabilities as a teacher file, a student trained on
it end to end (tiny shards), resume, and per fold no teacher row from a model that saw the fold's
held-out part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from run_utils import tiny_config

from msa_dist.cli import main
from msa_dist.common.errors import MsaDistError
from msa_dist.data.format.manifest import load_manifest
from msa_dist.engine.teacher import read_teacher_file
from msa_dist.engine.trainer import train
from msa_dist.experiments.cv import ensemble_probs, model_log_probs
from msa_dist.experiments.distill import run_distill
from msa_dist.experiments.folds import fold_dir


class CountingTrain:
    """The real trainer, recording which runs it trained (as `dir/name`)."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, cfg, run_dir):
        self.calls.append(f"{Path(run_dir).parent.name}/{Path(run_dir).name}")
        return train(cfg, run_dir)


@pytest.mark.slow
def test_distill_on_a_split_trains_teachers_then_a_student_on_their_mean(tmp_path, shard_dir):
    cfg, run_dir = tiny_config(shard_dir, "train.epochs=1", "train.distill_weight=0.7"), tmp_path / "d"
    counting = CountingTrain()
    summary = run_distill(cfg, run_dir, [1, 2], train_fn=counting, show=False)
    assert counting.calls == ["teachers/seed-1", "teachers/seed-2", "d/student"]
    table = read_teacher_file(run_dir / "teachers" / "teacher.json")
    train_guids = load_manifest(shard_dir)["splits"]["train"]["guids"]
    assert sorted(table) == sorted(train_guids)  # the train split only: no val, no test row
    members = [model_log_probs(run_dir / "teachers" / f"seed-{s}", str(shard_dir), "train")[:2] for s in (1, 2)]
    keys, probs = ensemble_probs(members)
    assert torch.allclose(torch.tensor([table[k] for k in keys]), probs, atol=1e-5)
    student = yaml.safe_load((run_dir / "student" / "config.yaml").read_text())["train"]
    assert student["teacher"] == str((run_dir / "teachers" / "teacher.json").resolve())
    assert student["seed"] == 0 and student["distill_weight"] == 0.7
    assert set(summary["rows"]) == {"one teacher", "ensemble of 2 teachers", "student"}
    assert all(0 <= row["accuracy"] <= 1 for row in summary["rows"].values())
    assert "| student |" in (run_dir / "distill.md").read_text()
    assert json.loads((run_dir / "distill.json").read_text())["distill"] == {"weight": 0.7, "temperature": 2.0}

    counting = CountingTrain()
    run_distill(cfg, run_dir, [1, 2], train_fn=counting, show=False)
    assert counting.calls == []  # resumable: every run finished earlier


@pytest.mark.slow
def test_distill_per_fold_uses_only_that_folds_training_part(tmp_path, shard_dir):
    cfg, run_dir = tiny_config(shard_dir, "train.epochs=1"), tmp_path / "d"
    summary = run_distill(cfg, run_dir, [1, 2], folds=2, show=False)
    for fold in range(2):
        table = read_teacher_file(run_dir / "teachers" / f"fold-{fold}.json")
        split = load_manifest(fold_dir(run_dir / "folds", fold))["splits"]
        assert sorted(table) == sorted(split["train"]["guids"]) and not set(table) & set(split["val"]["guids"])
        saved = json.loads((run_dir / "teachers" / f"fold-{fold}.json").read_text())["members"]
        assert [Path(m).name for m in saved] == [f"fold-{fold}-seed-1", f"fold-{fold}-seed-2"]
        student = yaml.safe_load((run_dir / "student" / f"fold-{fold}-seed-0" / "config.yaml").read_text())
        assert student["train"]["teacher"].endswith(f"fold-{fold}.json")
    assert summary["rows"]["ensemble of 2 teachers"] and summary["rows"]["student"]["accuracy.std"] >= 0


@pytest.mark.slow
def test_distill_only_folds_trains_those_folds_teachers_and_students(tmp_path, shard_dir):
    cfg, run_dir = tiny_config(shard_dir, "train.epochs=1"), tmp_path / "d"
    summary = run_distill(cfg, run_dir, [1, 2], folds=3, show=False, only=[1])
    assert sorted(p.name for p in (run_dir / "teachers").glob("fold-*-seed-*")) == ["fold-1-seed-1", "fold-1-seed-2"]
    assert sorted(p.name for p in (run_dir / "teachers").glob("fold-*.json")) == ["fold-1.json"]
    assert [p.name for p in (run_dir / "student").glob("fold-*")] == ["fold-1-seed-0"]
    assert "folds 1 only" in summary["mode"] and summary["rows"]["student"]["accuracy"] >= 0


def test_distill_refuses_one_teacher_and_a_preset_teacher(tmp_path, shard_dir, capsys):
    cfg = tiny_config(shard_dir)
    with pytest.raises(MsaDistError, match="at least 2 seeds"):
        run_distill(cfg, tmp_path / "d", [1])
    with pytest.raises(MsaDistError, match="train.teacher is set"):
        run_distill(tiny_config(shard_dir, "train.teacher=x.json"), tmp_path / "d", [1, 2])
    assert main(["distill", "--config", "configs/cpu_scratch.yaml", "--teacher-seeds", "1,x"]) == 2
    assert "--teacher-seeds takes integers" in capsys.readouterr().err
    with pytest.raises(MsaDistError, match="--only-folds needs --folds"):
        run_distill(cfg, tmp_path / "d", [1, 2], only=[0])


def test_a_student_with_a_broken_teacher_file_stops_in_one_line(tmp_path, shard_dir):
    bad = tmp_path / "teacher.json"
    bad.write_text('{"format": "msa-dist-teacher", "version": 1}')
    with pytest.raises(MsaDistError, match="teacher file .* is not usable"):
        train(tiny_config(shard_dir, f"train.teacher={bad}"), tmp_path / "run")


def test_a_student_trains_end_to_end_on_a_teacher_file(tmp_path, shard_dir):
    """The teacher's rows reach the loss: the same run with and without them logs different losses."""
    from msa_dist.engine.teacher import write_teacher_file

    guids = load_manifest(shard_dir)["splits"]["train"]["guids"]
    path = tmp_path / "teacher.json"
    write_teacher_file(path, guids, torch.tensor([[0.1, 0.8, 0.1]]).repeat(len(guids), 1), {"note": "synthetic"})
    losses = {}
    for name, extra in (("plain", ()), ("student", (f"train.teacher={path}", "train.distill_weight=0.9"))):
        summary = train(tiny_config(shard_dir, "train.epochs=1", *extra), tmp_path / name)
        assert summary["status"] == "finished" and summary["val"]["accuracy"] >= 0
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records if r["type"] == "train"]
    assert len(losses["plain"]) == len(losses["student"]) and losses["plain"][0] != losses["student"][0]
