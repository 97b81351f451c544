"""Where a command writes when `--run-dir` is not given: one rule for every command."""

from __future__ import annotations

import re
from pathlib import Path

from msa_dist.common.errors import MsaDistError

RUNS_ROOT = Path("runs")


def default_run_dir(config_path: str, command: str | None = None) -> str:
    """`runs/<config name>` for `train`, `runs/<config name>-<command>` for cv, ablate and sweep."""
    stem = Path(config_path).stem
    return str(RUNS_ROOT / (f"{stem}-{command}" if command else stem))


def local_run_dir(run_dir: str, command: str) -> str:
    """`run_dir` for a command that writes a local folder: a URL (s3://...) is one line, never a
    local folder named after its scheme (only `train` keeps a run dir on a store)."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", run_dir):
        raise MsaDistError(
            f"--run-dir {run_dir}: `msa-dist {command}` writes a local folder; a run dir on a store "
            "(s3://...) is for `msa-dist train`"
        )
    return run_dir
