"""launch/device_check.sh's plumbing on the CPU (DRY_RUN=1: tiny models, synthetic data): a part's
numbers land in the results file with the kind of data, a rerun keeps the finished part, and a part
the budget cannot cover is skipped with a reason. ~40 s: three small shard sets are built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(tmp_path: Path, only: str, budget_s: int) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DRY_RUN": "1",
        "DRY_PAIRS": "40",
        "ONLY": only,
        "BUDGET_S": str(budget_s),
        "WORK_DIR": str(tmp_path / "work"),
        "STAGED_DIR": str(tmp_path / "staged"),
        "DEVICE_DATA": str(tmp_path / "no-slice"),
        "DEVICE_CARRY": str(tmp_path / "no-pieces"),
    }
    env.pop("OUT", None)
    return subprocess.run(
        ["bash", str(ROOT / "launch" / "device_check.sh"), "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_dry_run_writes_each_part_and_keeps_it_on_a_rerun(tmp_path):
    first = _run(tmp_path, "02-seed-baseline", 600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "no " in first.stdout and "nothing to stage" in first.stdout  # no pieces carried: said, not fatal
    [results_file] = (tmp_path / "work").glob("cpu-*.json")
    results = json.loads(results_file.read_text())
    assert results["data"] == "synthetic"
    assert [r["label"] for r in results["results"]] == ["02-seed-baseline"]
    assert results["results"][0]["samples_per_s"] > 0

    again = _run(tmp_path, "01-gpu-fast|02-seed-baseline", 10)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "KEPT 02-seed-baseline" in again.stdout
    assert "SKIP 01-gpu-fast:" in again.stdout and "needs ~45s" in again.stdout
    assert not (tmp_path / "work" / "parts" / "01-gpu-fast.json").exists()
    assert not (ROOT / "benchmarks" / "results" / results_file.name).exists()  # a dry run writes nothing there
