"""`msa-dist sweep` (experiments/sweep.py): points ranked, the best config written, its resume rule and grid
mistakes (ablation: test_ablate.py, reports: test_report.py; a point restarted on two ranks:
tests/integration/test_two_ranks.py)."""

from __future__ import annotations

import json

import pytest
from fake_runs import FakeTrain, sweep_cfg

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import load_config
from msa_dist.experiments.demo import DEMO_CONFIG
from msa_dist.experiments.sweep import parse_grid, run_sweep

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


@pytest.mark.parametrize(
    "items,match", [([], "at least one"), (["optim.lr"], "key.sub=value1"), (["optim.lr=1,2", "optim.lr=3"], "twice")]
)
def test_grid_mistakes_are_plain_errors(items, match):
    with pytest.raises(MsaDistError, match=match):
        parse_grid(items)


def test_grid_values_are_checked_before_training(tmp_path):
    train = FakeTrain()
    with pytest.raises(MsaDistError, match="model.head.fusion"):
        run_sweep(sweep_cfg(tmp_path), parse_grid(["model.head.fusion=concat,magic"]), tmp_path / "s", train_fn=train)
    assert train.calls == []
