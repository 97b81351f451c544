"""A short train -> evaluate -> predict through the CLI, on a slice of the real data, and the demo."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from msa_dist.cli import main
from msa_dist.common.labels import LABELS

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "mvsa"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAST = [
    "train.epochs=2",
    "train.batch_size=16",
    "data.image_size=48",
    "data.resize_size=56",
    "data.workers=1",
    "model.text.tiny_vocab_size=600",
    "model.text.tiny_hidden=32",
    "model.image.tiny_width=8",
    "log.progress=false",
    "optim.warmup_steps=2",
]


@pytest.fixture(scope="module")
def real_slice(tmp_path_factory):
    """A DATA_ROOT with the first 120 labelled and 15 unlabelled real pairs (symlinked)."""
    if not (REAL / "train.txt").is_file():
        pytest.skip(f"real data not found at {REAL} (../shared/data/mvsa beside the repo)")
    root = tmp_path_factory.mktemp("mvsa-slice")
    (root / "data").mkdir()
    labelled = (REAL / "train.txt").read_text().splitlines()[1:121]
    test = (REAL / "test_without_label.txt").read_text().splitlines()[1:16]
    for line in labelled + test:
        guid = line.split(",")[0]
        for ext in ("jpg", "txt"):
            (root / "data" / f"{guid}.{ext}").symlink_to(REAL / "data" / f"{guid}.{ext}")
    (root / "train.txt").write_text("guid,tag\n" + "\n".join(labelled) + "\n")
    (root / "test_without_label.txt").write_text("guid,tag\n" + "\n".join(test) + "\n")
    return root, [line.split(",")[0] for line in test]


@pytest.mark.slow
def test_train_evaluate_predict_on_real_slice(real_slice, tmp_path, capsys):
    root, test_guids = real_slice
    shards, run = tmp_path / "shards", tmp_path / "run"
    assert (
        main(["shards", "build", str(root), "--out", str(shards), "--val-fraction", "0.25", "--shard-size", "40"]) == 0
    )
    assert main(["shards", "verify", str(shards)]) == 0
    assert (
        main(
            [
                "train",
                "--config",
                str(CONFIGS / "cpu_small.yaml"),
                "--run-dir",
                str(run),
                f"data.shards={shards}",
                *FAST,
            ]
        )
        == 0
    )
    assert (run / "config.yaml").is_file() and (run / "tokenizer").is_dir()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    assert len(evals) == 2 and evals[-1]["samples"] == 30 and set(evals[-1]["per_class"]) == set(LABELS)
    assert (run / "checkpoints" / "best" / "model.pt").is_file()
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--shards", str(shards)]) == 0
    assert "macro-F1" in capsys.readouterr().out
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(run), "--shards", str(shards), "--out", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["guid", "tag"]
    assert [r[0] for r in rows[1:]] == test_guids  # the order of test_without_label.txt
    assert {r[1] for r in rows[1:]} <= set(LABELS)


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--config", str(CONFIGS / "cpu_small.yaml"), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "optim.lrr" in err
    assert (
        main(
            [
                "train",
                "--config",
                str(CONFIGS / "cpu_small.yaml"),
                f"data.shards={tmp_path}",
                "--run-dir",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "manifest.json" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path), "--shards", str(tmp_path)]) == 2
    assert "run directory" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "msa_dist", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "demo" in result.stdout


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    from msa_dist.experiments.demo import run_demo

    result = run_demo(str(tmp_path / "demo"), ["train.epochs=2", "log.progress=false"])
    rows = result["predictions"].read_text().splitlines()
    assert rows[0] == "guid,tag" and len(rows) == 101
    assert result["val"]["accuracy"] > 0.6  # learnable from either modality; chance is ~0.55
