"""One experiment point = one training run in its own subdirectory, marked finished by result.json.

Resume rule (ablate and sweep): a point whose result.json exists, with the same resolved config,
is skipped; a point directory without it (a run killed part-way) is deleted and trained again from
scratch. A point whose saved config differs from the requested one is an error, not overwritten.
Under torchrun every rank runs the same points (each `train` call is collective); only rank 0
deletes, writes result.json and reports.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed
import yaml

from msa_dist.common.atomic import write_atomic
from msa_dist.common.display import console
from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import Config, to_dict
from msa_dist.engine.backends.base import join_process_group
from msa_dist.engine.runtime import read_env
from msa_dist.experiments.report import best_metrics, read_records, write_run_report
from msa_dist.experiments.tables import flatten_metrics

RESULT_FILE = "result.json"


@dataclass
class Point:
    """A named config to train in `run_dir / name`."""

    name: str
    cfg: Config
    values: dict = field(default_factory=dict)  # what distinguishes this point (shown in tables)

    def directory(self, run_dir: Path) -> Path:
        return Path(run_dir) / self.name


def is_main_process() -> bool:
    """Rank 0 (or a plain single process)."""
    return read_env("cpu").is_main


def load_result(point_dir: Path) -> dict | None:
    """The point's result.json, or None if it has not finished."""
    path = Path(point_dir) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def plan(points: list[Point], run_dir: Path) -> list[tuple[Point, dict | None]]:
    """Each point with its finished result (skip) or None (train); decided before any training starts."""
    planned = []
    for point in points:
        point_dir = point.directory(run_dir)
        result = load_result(point_dir)
        if result is not None:
            saved = yaml.safe_load((point_dir / "config.yaml").read_text())
            if saved != to_dict(point.cfg):
                raise MsaDistError(
                    f"{point_dir} holds a finished run of a different config: use another "
                    "--run-dir, or delete that directory to train the point again"
                )
        planned.append((point, result))
    return planned


def run_point(point: Point, run_dir: Path, train_fn: Callable) -> dict | None:
    """Train one point from scratch; returns its result (rank 0), {} on other ranks, None if preempted."""
    point_dir = point.directory(run_dir)
    main = is_main_process()
    _start_afresh(point, point_dir, main)
    start = time.perf_counter()
    summary = train_fn(point.cfg, point_dir)
    if summary.get("status") != "finished":
        return None
    if not main:
        return {}
    evals = read_records(point_dir)[1]
    metrics, epoch = best_metrics(point_dir, evals)
    result = {
        "name": point.name,
        "values": point.values,
        "status": "finished",
        "best_epoch": epoch,
        "epochs_run": evals[-1]["epoch"] if evals else 0,
        "train_seconds": round(time.perf_counter() - start, 1),
        "best": metrics,
        "final": evals[-1] if evals else None,
    }
    write_run_report(point_dir)
    write_atomic(point_dir / RESULT_FILE, json.dumps(result, indent=1))  # the marker: written after everything else
    return result


def _start_afresh(point: Point, point_dir: Path, main: bool) -> None:
    """Rank 0 deletes an unfinished point's directory, and no rank goes on before it is gone:
    after a torchrun restart `train` resumes by itself (`--resume auto`), so a rank running ahead
    would read the `checkpoints/latest` being deleted."""
    if main and point_dir.exists():
        console.print(f"[yellow]{point.name}: unfinished run found, training it again from scratch[/]")
        shutil.rmtree(point_dir)
    env = read_env(point.cfg.backend.device)
    if env.world_size > 1:
        join_process_group(env, point.cfg.backend.timeout_s)  # the group train() joins next (once per command)
        torch.distributed.barrier()


def run_points(points: list[Point], run_dir: Path, train_fn: Callable) -> tuple[list[dict], bool]:
    """Run the unfinished points in order; returns (results of finished points, whether all finished)."""
    run_dir = Path(run_dir)
    main = is_main_process()
    results = []
    for i, (point, result) in enumerate(plan(points, run_dir)):
        if result is not None:
            if main:
                console.print(f"[dim]point {i + 1}/{len(points)} {point.name}: finished earlier, skipped[/]")
        else:
            if main:
                console.print(f"[bold]point {i + 1}/{len(points)} {point.name}[/]")
            result = run_point(point, run_dir, train_fn)
            if result is None:
                if main:
                    console.print(f"[yellow]{point.name} was preempted: run the same command again to go on[/]")
                return results, False
        results.append(result)
    return results, True


def result_row(result: dict) -> dict:
    """A table row: the point's values and its best val metrics."""
    return {
        "point": result["name"],
        **result.get("values", {}),
        "best_epoch": result.get("best_epoch"),
        "train_seconds": result.get("train_seconds"),
        **flatten_metrics(result.get("best")),
    }
