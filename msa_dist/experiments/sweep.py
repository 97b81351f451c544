"""`msa-dist sweep`: every combination of `--grid key=v1,v2,...` values, resumable, ranked by a val metric."""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from msa_dist.common.atomic import write_atomic
from msa_dist.common.display import console
from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import Config, save_config, set_dotted, validate
from msa_dist.experiments.points import Point, is_main_process, result_row, run_points
from msa_dist.experiments.tables import Column, markdown_table, metric_columns, rich_table

METRICS = ("accuracy", "macro_f1", "weighted_f1")


def parse_grid(items: list[str]) -> list[tuple[str, list[Any]]]:
    """['optim.lr=1e-5,3e-5', ...] -> [('optim.lr', [1e-05, 3e-05]), ...]; values are read as YAML."""
    grid, seen = [], set()
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        values = [yaml.safe_load(v.strip()) for v in raw.split(",") if v.strip()]
        if not sep or not key or not values:
            raise MsaDistError(f"--grid {item!r} must look like key.sub=value1,value2")
        if key in seen:
            raise MsaDistError(f"--grid {key} is given twice")
        seen.add(key)
        grid.append((key, values))
    if not grid:
        raise MsaDistError("msa-dist sweep needs at least one --grid key=value1,value2")
    return grid


def _slug(key: str, value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", f"{key}={value}")


def _short(key: str, grid: list[tuple[str, list[Any]]]) -> str:
    """The key's last part as a column header, unless another grid key ends the same way."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k, _ in grid) == 1 else key


def sweep_points(cfg: Config, grid: list[tuple[str, list[Any]]]) -> list[Point]:
    """One point per combination, checked against the schema before anything trains."""
    points = []
    keys = [key for key, _ in grid]
    for combo in itertools.product(*(values for _, values in grid)):
        point_cfg = copy.deepcopy(cfg)
        for key, value in zip(keys, combo):
            set_dotted(point_cfg, key, value)
        validate(point_cfg)
        values = dict(zip(keys, combo))
        points.append(Point("__".join(_slug(k, v) for k, v in values.items()), point_cfg, values))
    return points


def _cv_rows(points: list[Point], run_dir: Path, k: int, train_fn: Callable | None) -> tuple[list[dict], bool]:
    """Each point's k-fold CV (in its own directory, on folds shared by all points): its mean scores."""
    from msa_dist.experiments.cv import run_cv

    rows = []
    for i, point in enumerate(points):
        if is_main_process():
            console.print(f"[bold]point {i + 1}/{len(points)} {point.name}: {k}-fold CV[/]")
        summary = run_cv(
            point.cfg, point.directory(run_dir), k, folds_root=run_dir / "folds", train_fn=train_fn, show=False
        )
        if summary is not None and summary["mean"]:
            rows.append(
                {"point": point.name, **point.values, **summary["mean"], "train_seconds": summary["train_seconds"]}
            )
        if summary is not None and not summary["complete"]:
            return rows, False
    return rows, True


def run_sweep(
    cfg: Config,
    grid: list[tuple[str, list[Any]]],
    run_dir: str | Path,
    metric: str | None = None,
    train_fn: Callable | None = None,
    cv_folds: int = 0,
) -> list[dict]:
    """Train the unfinished points, then write sweep.md, sweep.json and best_config.yaml (rank 0).

    With `cv_folds` every point is a k-fold CV and the points are ranked by its mean.
    """
    if train_fn is None:
        from msa_dist.engine.trainer import train as train_fn
    metric = metric or cfg.train.best_metric
    allowed = METRICS[:2] if cv_folds else METRICS
    if metric not in allowed:
        raise MsaDistError(f"--metric must be one of {', '.join(allowed)}; got {metric!r}")
    run_dir = Path(run_dir)
    points = sweep_points(cfg, grid)
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        console.print(f"sweep: {len(points)} points ({' x '.join(f'{len(v)} {k}' for k, v in grid)}) in {run_dir}")
    if cv_folds:
        rows, complete = _cv_rows(points, run_dir, cv_folds, train_fn)
    else:
        results, complete = run_points(points, run_dir, train_fn)
        rows = [result_row(r) for r in results]
    if not is_main_process():
        return []
    rows = sorted(rows, key=lambda row: -(row.get(metric) or 0.0))
    std = [Column(f"{metric}.std", f"{metric} std", lambda v: f"{v:.4f}", True)] if cv_folds else []
    columns = (
        [Column("rank", "#", str, True)]
        + [Column(k, _short(k, grid)) for k, _ in grid]
        + metric_columns(per_class=False)
        + std
        + [
            Column("neutral.f1", "neutral F1", lambda v: f"{v:.3f}", True),
            Column("best_epoch", "best epoch", str, True),
            Column("train_seconds", "seconds", lambda v: f"{v:.0f}", True),
        ]
    )
    for i, row in enumerate(rows):
        row["rank"] = i + 1
    scored = f"{cv_folds}-fold CV mean" if cv_folds else "val"
    title = f"sweep: {len(rows)}/{len(points)} points finished, sorted by {scored} {metric}"
    console.print(rich_table(title, [c for c in columns if c.key not in ("weighted_f1", "train_seconds")], rows))
    scope = "the last epoch of each fold run" if cv_folds else "each point's best checkpoint"
    lines = [f"# Sweep\n\n{title} ({scope}).\n", markdown_table(columns, rows)]
    if rows:
        best = next(p for p in points if p.name == rows[0]["point"])
        save_config(best.cfg, run_dir / "best_config.yaml")
        lines.append(f"Best point: `{best.name}` ({metric} {rows[0][metric]:.4f}); its config: best_config.yaml\n")
        console.print(f"best: {best.name} ({metric} {rows[0][metric]:.4f}) -> {run_dir / 'best_config.yaml'}")
    if not complete:
        lines.append("**Incomplete**: a point was preempted; run the same command again.\n")
    write_atomic(run_dir / "sweep.md", "\n".join(lines))
    write_atomic(
        run_dir / "sweep.json",
        json.dumps({"metric": metric, "grid": dict(grid), "complete": complete, "rows": rows}, indent=1, default=str),
    )
    return rows
