"""Ablation, sweep (and its resume rule), per-run reports with plots, and run comparisons."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from msa_dist.cli import main
from msa_dist.config.schema import Config, load_config, save_config
from msa_dist.experiments.demo import DEMO_CONFIG
from msa_dist.common.errors import MsaDistError
from msa_dist.experiments.ablate import run_ablation
from msa_dist.experiments.plots import CONFUSION_SIZE, CURVES_SIZE, DPI
from msa_dist.experiments.report import compare_runs, write_run_report
from msa_dist.experiments.sweep import parse_grid, run_sweep
from msa_dist.common.labels import LABELS

PER_CLASS = [f"{name}.{field}" for name in LABELS for field in ("precision", "recall", "f1")]


def fake_metrics(accuracy: float) -> dict:
    """A metrics dict like the trainer's evaluation writes."""
    per_class = {name: {"precision": accuracy, "recall": accuracy, "f1": accuracy, "support": 10} for name in LABELS}
    return {"accuracy": accuracy, "macro_f1": accuracy - 0.1, "weighted_f1": accuracy - 0.05, "samples": 30,
            "per_class": per_class, "confusion_matrix": [[8, 1, 1], [2, 6, 2], [0, 3, 7]]}


class FakeTrain:
    """Stands in for `trainer.train`: writes what a finished run leaves behind; val accuracy = optim.lr * 1000."""

    def __init__(self, preempt: set[str] = frozenset()):
        self.calls: list[str] = []
        self.preempt = preempt

    def __call__(self, cfg: Config, run_dir: Path) -> dict:
        run_dir = Path(run_dir)
        self.calls.append(run_dir.name)
        (run_dir / "checkpoints").mkdir(parents=True)
        save_config(cfg, run_dir / "config.yaml")
        if run_dir.name in self.preempt:
            return {"status": "preempted"}
        accuracy = cfg.optim.lr * 1000
        records = [{"type": "train", "epoch": 0, "step": s, "loss": 1.0 / s, "lr": cfg.optim.lr} for s in (1, 2, 3)]
        records += [{"type": "eval", "epoch": e, "step": 3 * e, "split": "val", **fake_metrics(accuracy - 0.1 / e)}
                    for e in (1, 2)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (run_dir / "checkpoints" / "best").mkdir()
        (run_dir / "checkpoints" / "best" / "metrics.json").write_text(json.dumps(records[-1]))
        return {"status": "finished"}


def sweep_cfg(tmp_path) -> Config:
    return load_config(base=DEMO_CONFIG, overrides=[f"data.shards={tmp_path / 'shards'}"])


GRID = ["optim.lr=1e-4,5e-4", "model.head.hidden=16,32"]


def test_sweep_ranks_points_writes_best_config_and_resumes(tmp_path):
    cfg, run_dir = sweep_cfg(tmp_path), tmp_path / "sweep"
    train = FakeTrain()
    rows = run_sweep(cfg, parse_grid(GRID), run_dir, metric="accuracy", train_fn=train)
    assert len(train.calls) == 4 and len(rows) == 4
    assert [r["optim.lr"] for r in rows] == ["5e-4", "5e-4", "1e-4", "1e-4"]  # sorted by accuracy
    best = load_config(run_dir / "best_config.yaml")
    assert best.optim.lr == pytest.approx(5e-4) and best.model.head.hidden in (16, 32)
    assert "| # |" in (run_dir / "sweep.md").read_text()
    assert json.loads((run_dir / "sweep.json").read_text())["complete"] is True

    train = FakeTrain()
    run_sweep(cfg, parse_grid(GRID), run_dir, metric="accuracy", train_fn=train)
    assert train.calls == []  # every point finished: nothing is trained again

    half = run_dir / rows[-1]["point"]
    (half / "result.json").unlink()  # as if killed before the end
    (half / "stray-file").write_text("left by the killed run")
    train = FakeTrain()
    rows = run_sweep(cfg, parse_grid(GRID), run_dir, metric="accuracy", train_fn=train)
    assert train.calls == [half.name] and len(rows) == 4
    assert not (half / "stray-file").exists()  # redone from scratch
    assert (half / "result.json").is_file() and (half / "curves.png").is_file()


def test_sweep_stops_at_a_preempted_point_and_refuses_a_changed_config(tmp_path):
    cfg, run_dir = sweep_cfg(tmp_path), tmp_path / "sweep"
    first_points = ["optim.lr=1e-4__model.head.hidden=16", "optim.lr=1e-4__model.head.hidden=32"]
    train = FakeTrain(preempt={first_points[1]})
    rows = run_sweep(cfg, parse_grid(GRID), run_dir, train_fn=train)
    assert train.calls == first_points and len(rows) == 1
    assert not (run_dir / first_points[1] / "result.json").exists()
    assert json.loads((run_dir / "sweep.json").read_text())["complete"] is False
    changed = load_config(base=DEMO_CONFIG, overrides=[f"data.shards={tmp_path / 'shards'}", "train.epochs=9"])
    with pytest.raises(MsaDistError, match="different config"):
        run_sweep(changed, parse_grid(GRID), run_dir, train_fn=FakeTrain())


@pytest.mark.parametrize("items,match", [([], "at least one"), (["optim.lr"], "key.sub=value1"),
                                         (["optim.lr=1,2", "optim.lr=3"], "twice")])
def test_grid_mistakes_are_plain_errors(items, match):
    with pytest.raises(MsaDistError, match=match):
        parse_grid(items)


def test_grid_values_are_checked_before_training(tmp_path):
    train = FakeTrain()
    with pytest.raises(MsaDistError, match="model.head.fusion"):
        run_sweep(sweep_cfg(tmp_path), parse_grid(["model.head.fusion=concat,magic"]), tmp_path / "s", train_fn=train)
    assert train.calls == []


def test_ablation_trains_three_modalities_and_tabulates_them(tmp_path, shard_dir):
    cfg = load_config(base=DEMO_CONFIG, overrides=[
        f"data.shards={shard_dir}", "data.image_size=32", "data.resize_size=32", "data.workers=0",
        "train.epochs=1", "train.batch_size=4", "log.progress=false", "log.every_steps=1",
        "model.head.fusion=gated", "model.text.tiny_vocab_size=100", "optim.warmup_steps=1"])
    rows = run_ablation(cfg, tmp_path / "ablation")
    assert [r["point"] for r in rows] == ["text", "image", "both"]
    assert [r["fusion"] for r in rows] == ["concat", "concat", "gated"]  # gated needs two modalities
    saved = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    for row in saved["rows"]:
        for key in ["accuracy", "macro_f1", *PER_CLASS]:
            assert 0.0 <= row[key] <= 1.0, key
    header = (tmp_path / "ablation" / "ablation.md").read_text().splitlines()[4]
    assert header.startswith("| modality | fusion | accuracy | macro-F1 |") and "neutral R" in header
    for modality in ("text", "image", "both"):
        assert load_config(tmp_path / "ablation" / modality / "config.yaml").model.modality == modality
        assert (tmp_path / "ablation" / modality / "report.md").is_file()


def test_run_report_writes_plots_of_the_expected_size(tmp_path):
    cfg, run_dir = sweep_cfg(tmp_path), tmp_path / "run"
    FakeTrain()(cfg, run_dir)
    report = write_run_report(run_dir)
    for name, inches in (("confusion_matrix.png", CONFUSION_SIZE), ("curves.png", CURVES_SIZE)):
        path = run_dir / name
        assert path.stat().st_size > 5000, name  # a drawn figure, not an empty canvas
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == (int(inches[0] * DPI), int(inches[1] * DPI))
            assert sum(1 for n in image.convert("L").histogram() if n) > 20  # more than a few flat colours
    text = report.read_text()
    assert "| accuracy | macro-F1 |" in text and "![curves](curves.png)" in text
    assert "| neutral | 2 | 6 | 2 |" in text  # the confusion matrix row of the true neutrals


def test_report_command_compares_runs_and_expands_a_sweep_dir(tmp_path, capsys):
    cfg = sweep_cfg(tmp_path)
    run_sweep(cfg, parse_grid(["optim.lr=1e-4,5e-4"]), tmp_path / "sweep", train_fn=FakeTrain())
    FakeTrain()(cfg, tmp_path / "single")
    out = tmp_path / "cmp.md"
    assert main(["report", str(tmp_path / "sweep"), str(tmp_path / "single"), "--out", str(out)]) == 0
    table = out.read_text()
    assert table.count("| optim.lr=") == 2 and "| single |" in table
    assert "neutral F1" in table
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    rows = compare_runs([tmp_path / "single"], tmp_path / "one.md", show=False)
    assert rows[0]["accuracy"] == pytest.approx(cfg.optim.lr * 1000 - 0.05)


def _restarted_point_rank(rank: int, port: int, run_dir: str, seen: dict) -> None:
    """One rank of a 2-rank job restarted by torchrun in the middle of a point."""
    import os
    import shutil
    import time

    import msa_dist.experiments.points as points
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if rank == 0:  # a slow delete: without the barrier rank 1 trains among the stale files
        real_rmtree = shutil.rmtree
        points.shutil.rmtree = lambda path, **kw: (time.sleep(1.5), real_rmtree(path, **kw))
    cfg = load_config(overrides=["backend.device=cpu", "backend.name=ddp"])
    point = points.Point("p", cfg)

    def train_fn(cfg, point_dir):  # train() would resume from checkpoints/latest here
        seen[rank] = (Path(point_dir) / "checkpoints" / "latest").exists()
        return {"status": "preempted"}
    points.run_point(point, Path(run_dir), train_fn)
    import torch.distributed as dist
    dist.destroy_process_group()


def test_a_restarted_point_is_deleted_before_any_rank_trains_it(tmp_path):
    """Defect (a): rank 0 deletes an unfinished point directory; the other ranks wait for it."""
    import torch.multiprocessing as mp

    from dist_utils import free_port
    stale = tmp_path / "p" / "checkpoints"
    stale.mkdir(parents=True)
    (stale / "latest").write_text("step-0000004")
    seen = mp.Manager().dict()
    mp.spawn(_restarted_point_rank, args=(free_port(), str(tmp_path), seen), nprocs=2, join=True)
    assert dict(seen) == {0: False, 1: False}
