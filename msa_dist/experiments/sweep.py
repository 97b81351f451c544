"""`msa-dist sweep`: every combination of `--grid key=v1,v2,...` values, resumable, ranked by a val metric."""
from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from msa_dist.config import Config, save_config, set_dotted, validate
from msa_dist.engine.display import console
from msa_dist.errors import MsaDistError
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


def run_sweep(cfg: Config, grid: list[tuple[str, list[Any]]], run_dir: str | Path, metric: Optional[str] = None,
              train_fn: Optional[Callable] = None) -> list[dict]:
    """Train the unfinished points, then write sweep.md, sweep.json and best_config.yaml (rank 0)."""
    if train_fn is None:
        from msa_dist.engine.trainer import train as train_fn
    metric = metric or cfg.train.best_metric
    if metric not in METRICS:
        raise MsaDistError(f"--metric must be one of {', '.join(METRICS)}; got {metric!r}")
    run_dir = Path(run_dir)
    points = sweep_points(cfg, grid)
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        console.print(f"sweep: {len(points)} points ({' x '.join(f'{len(v)} {k}' for k, v in grid)}) in {run_dir}")
    results, complete = run_points(points, run_dir, train_fn)
    if not is_main_process():
        return []
    rows = sorted((result_row(r) for r in results), key=lambda row: -(row.get(metric) or 0.0))
    columns = ([Column("rank", "#", str, True)] + [Column(k, _short(k, grid)) for k, _ in grid]
               + metric_columns(per_class=False)
               + [Column("neutral.f1", "neutral F1", lambda v: f"{v:.3f}", True),
                  Column("best_epoch", "best epoch", str, True),
                  Column("train_seconds", "seconds", lambda v: f"{v:.0f}", True)])
    for i, row in enumerate(rows):
        row["rank"] = i + 1
    title = f"sweep: {len(rows)}/{len(points)} points finished, sorted by val {metric}"
    console.print(rich_table(title, [c for c in columns if c.key not in ("weighted_f1", "train_seconds")], rows))
    lines = [f"# Sweep\n\n{title} (each point's best checkpoint).\n",
             markdown_table(columns, rows)]
    if rows:
        best = next(p for p in points if p.name == rows[0]["point"])
        save_config(best.cfg, run_dir / "best_config.yaml")
        lines.append(f"Best point: `{best.name}` ({metric} {rows[0][metric]:.4f}); its config: best_config.yaml\n")
        console.print(f"best: {best.name} ({metric} {rows[0][metric]:.4f}) -> {run_dir / 'best_config.yaml'}")
    if not complete:
        lines.append("**Incomplete**: a point was preempted; run the same command again.\n")
    (run_dir / "sweep.md").write_text("\n".join(lines))
    (run_dir / "sweep.json").write_text(json.dumps({"metric": metric, "grid": dict(grid), "complete": complete,
                                                    "rows": rows}, indent=1, default=str))
    return rows
