"""`msa-dist cv`: stratified disjoint folds written as shard sets, resume, the ensemble, sweep --cv (under
torchrun: tests/integration/test_two_ranks.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from msa_dist.cli import main
from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import LABELS
from msa_dist.config.schema import load_config
from msa_dist.data.format.manifest import load_manifest
from msa_dist.data.loading.loader import as_shard_set
from msa_dist.engine.trainer import train
from msa_dist.experiments.cv import ensemble_probs, model_log_probs, run_cv
from msa_dist.experiments.demo import DEMO_CONFIG
from msa_dist.experiments.folds import assign_folds, build_folds, fold_dir, read_records
from msa_dist.experiments.sweep import parse_grid, run_sweep


def test_assign_folds_are_disjoint_stratified_and_fixed_by_the_seed():
    labels = {str(i): (0 if i < 31 else 1 if i < 40 else 2) for i in range(55)}  # 31 / 9 / 15
    parts = assign_folds(labels, 4, seed=3)
    flat = [g for part in parts for g in part]
    assert sorted(flat) == sorted(labels) and len(flat) == len(set(flat))  # a partition
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for label in range(3):
        per_part = [sum(labels[g] == label for g in part) for part in parts]
        assert max(per_part) - min(per_part) <= 1, per_part  # every class spread evenly
    assert assign_folds(labels, 4, seed=3) == parts
    assert assign_folds(labels, 4, seed=4) != parts
    with pytest.raises(MsaDistError, match="at least 2"):
        assign_folds(labels, 1, seed=0)


def test_fold_shard_sets_partition_the_labelled_pairs(tmp_path, shard_dir, raw_dataset):
    info = build_folds(shard_dir, tmp_path / "folds", 3, seed=0)
    labelled = set(raw_dataset.labels)
    vals = []
    for fold in range(3):
        directory = fold_dir(tmp_path / "folds", fold)
        splits = load_manifest(directory)["splits"]
        train_guids, val_guids = set(splits["train"]["guids"]), set(splits["val"]["guids"])
        assert not train_guids & val_guids and train_guids | val_guids == labelled
        assert set(read_records(directory, ("val",))) == val_guids  # the tars hold what the manifest lists
        assert as_shard_set(str(directory)).samples("train") == len(train_guids)  # an ordinary shard directory
        counts = Counter(raw_dataset.labels[g] for g in val_guids)
        assert (
            [counts[name] for name in LABELS] == [splits["val"]["class_counts"][name] for name in LABELS] == [2, 2, 2]
        )
        vals.append(val_guids)
    assert set().union(*vals) == labelled and sum(map(len, vals)) == len(labelled)
    assert [set(p) for p in info["parts"]] == vals
    assert json.loads((tmp_path / "folds" / "folds.json").read_text())["seed"] == 0
    assert build_folds(shard_dir, tmp_path / "folds", 3, seed=0) == info  # reused
    with pytest.raises(MsaDistError, match="folds"):
        build_folds(shard_dir, tmp_path / "folds", 2, seed=0)


def tiny_cfg(shard_dir, *extra):
    return load_config(
        base=DEMO_CONFIG,
        overrides=[
            f"data.shards={shard_dir}",
            "data.image_size=32",
            "data.resize_size=32",
            "data.workers=0",
            "train.epochs=1",
            "train.batch_size=4",
            "log.progress=false",
            "model.text.tiny_vocab_size=100",
            "optim.warmup_steps=1",
            *extra,
        ],
    )


class CountingTrain:
    """The real trainer, recording which points it trained."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, cfg, run_dir):
        self.calls.append(Path(run_dir).name)
        return train(cfg, run_dir)


@pytest.mark.slow
def test_cv_trains_every_fold_resumes_and_ensembles(tmp_path, shard_dir):
    cfg, run_dir = tiny_cfg(shard_dir), tmp_path / "cv"
    counting = CountingTrain()
    summary = run_cv(cfg, run_dir, 3, predict_out=str(tmp_path / "pred.csv"), train_fn=counting)
    assert counting.calls == ["fold-0-seed-0", "fold-1-seed-0", "fold-2-seed-0"]
    assert summary["complete"] and len(summary["runs"]) == 3
    for key in ("accuracy", "macro_f1", "neutral.f1"):
        values = [r[key] for r in summary["runs"]]
        assert summary["mean"][key] == pytest.approx(sum(values) / 3)
        assert summary["mean"][key + ".std"] >= 0.0
    for run in summary["runs"]:  # each fold scored on its own 6 held-out pairs
        oof = json.loads((run_dir / f"fold-{run['fold']}-seed-0" / "oof.json").read_text())
        assert len(oof["keys"]) == 6
    saved = json.loads((run_dir / "cv.json").read_text())
    assert saved["folds"] == 3 and "mean ± std" in (run_dir / "cv.md").read_text()

    # the ensemble = argmax of the mean of the fold models' probabilities
    members = [model_log_probs(run_dir / f"fold-{f}-seed-0", str(shard_dir), "test")[:2] for f in range(3)]
    keys, probs = ensemble_probs(members)
    index = [{k: i for i, k in enumerate(m[0])} for m in members]
    for i, key in enumerate(keys):
        mean = sum(m[1][index[j][key]].exp() for j, m in enumerate(members)) / 3
        assert torch.allclose(probs[i], mean, atol=1e-6)
    rows = (tmp_path / "pred.csv").read_text().splitlines()
    order = load_manifest(shard_dir)["splits"]["test"]["guids"]
    assert rows[0] == "guid,tag" and [r.split(",")[0] for r in rows[1:]] == order
    tags = dict(r.split(",") for r in rows[1:])
    assert all(tags[k] == LABELS[int(probs[i].argmax())] for i, k in enumerate(keys))

    counting = CountingTrain()
    run_cv(cfg, run_dir, 3, train_fn=counting, show=False)
    assert counting.calls == []  # every fold finished: nothing is trained again
    (run_dir / "fold-1-seed-0" / "result.json").unlink()  # as if killed before the end
    part = run_cv(cfg, run_dir, 3, train_fn=counting, show=False, only=[1, 0])
    assert counting.calls == ["fold-1-seed-0"]  # --only-folds 0,1: fold 0 finished earlier, fold 2 left out
    assert not part["complete"] and [r["fold"] for r in part["runs"]] == [0, 1]
    assert "Incomplete" in (run_dir / "cv.md").read_text()
    assert run_cv(cfg, run_dir, 3, train_fn=counting, show=False)["complete"]
    assert counting.calls == ["fold-1-seed-0"]


@pytest.mark.slow
def test_cv_command_and_sweep_ranked_by_cv_mean(tmp_path, shard_dir):
    assert main(["cv", "--config", "configs/cpu_scratch.yaml", "--folds", "1", "--run-dir", str(tmp_path / "x")]) == 2
    assert main(["cv", "--config", "configs/cpu_scratch.yaml", "--seeds", "0,x", "--run-dir", str(tmp_path / "x")]) == 2
    only = ["--only-folds", "0,3", "--folds", "3"]
    assert main(["cv", "--config", "configs/cpu_scratch.yaml", *only, "--run-dir", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()  # refused before anything was written
    cfg = tiny_cfg(shard_dir, "model.modality=text")
    rows = run_sweep(cfg, parse_grid(["optim.lr=1e-3,3e-3"]), tmp_path / "sweep", metric="macro_f1", cv_folds=2)
    assert len(rows) == 2 and rows[0]["macro_f1"] >= rows[1]["macro_f1"]
    for row in rows:
        cv = json.loads((tmp_path / "sweep" / row["point"] / "cv.json").read_text())
        assert cv["mean"]["macro_f1"] == pytest.approx(row["macro_f1"])
        assert cv["folds_root"] == str(tmp_path / "sweep" / "folds")  # one fold set for every point
    assert "2-fold CV mean" in (tmp_path / "sweep" / "sweep.md").read_text()


def test_summary_of_out_of_fold_predictions():
    from msa_dist.experiments.cv import summarize

    gen = torch.Generator().manual_seed(0)
    runs = []
    for seed in (0, 1):
        for fold in range(2):
            keys = [f"{fold}-{i}" for i in range(12)]
            labels = torch.tensor([i % 3 for i in range(12)])
            log_probs = torch.log_softmax(torch.randn(12, 3, generator=gen) + 2 * torch.eye(3)[labels], -1)
            runs.append(
                {
                    "fold": fold,
                    "seed": seed,
                    "train_seconds": 1.0,
                    "keys": keys,
                    "log_probs": log_probs,
                    "labels": labels,
                }
            )
    summary = summarize(runs, True, 2, 0, "shards")
    assert len(summary["runs"]) == 4 and summary["train_seconds"] == 4.0
    accuracies = [float((r["log_probs"].argmax(-1) == r["labels"]).float().mean()) for r in runs]
    assert summary["mean"]["accuracy"] == pytest.approx(sum(accuracies) / 4)
    fold0 = (runs[0]["log_probs"].exp() + runs[2]["log_probs"].exp()).argmax(-1)  # fold 0, seeds 0 and 1
    fold1 = (runs[1]["log_probs"].exp() + runs[3]["log_probs"].exp()).argmax(-1)
    expected = (
        float((fold0 == runs[0]["labels"]).float().mean()) + float((fold1 == runs[1]["labels"]).float().mean())
    ) / 2
    assert summary["seed_ensemble_mean"]["accuracy"] == pytest.approx(expected)
    assert summary["adjusted_mean"] is not None and len(summary["offsets"]) == 3
