"""Where a command writes when `--run-dir` is not given: one rule for every command."""

from __future__ import annotations

from pathlib import Path

RUNS_ROOT = Path("runs")


def default_run_dir(config_path: str, command: str | None = None) -> str:
    """`runs/<config name>` for `train`, `runs/<config name>-<command>` for cv, ablate and sweep."""
    stem = Path(config_path).stem
    return str(RUNS_ROOT / (f"{stem}-{command}" if command else stem))
