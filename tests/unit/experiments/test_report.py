"""Per-run reports with plots and run comparisons (experiments/report.py, `msa-dist report`)."""

from __future__ import annotations

import pytest
from fake_runs import FakeTrain, sweep_cfg
from PIL import Image

from msa_dist.cli import main
from msa_dist.experiments.plots import CONFUSION_SIZE, CURVES_SIZE, DPI
from msa_dist.experiments.report import compare_runs, write_run_report
from msa_dist.experiments.sweep import parse_grid, run_sweep


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
