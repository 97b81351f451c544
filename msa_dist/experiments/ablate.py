"""`msa-dist ablate`: the same config trained on text only, image only and both (same seed, same split)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

from msa_dist.common.atomic import write_atomic
from msa_dist.common.display import console
from msa_dist.config.schema import Config
from msa_dist.experiments.points import Point, is_main_process, result_row, run_points
from msa_dist.experiments.tables import Column, markdown_table, metric_columns, rich_table, transpose
from msa_dist.models.fusion import supports

MODALITIES = ("text", "image", "both")
TABLE_COLUMNS = (
    [Column("point", "modality"), Column("fusion", "fusion")]
    + metric_columns()
    + [Column("best_epoch", "best epoch", str, True)]
)


def ablation_points(cfg: Config) -> list[Point]:
    """One point per modality; a fusion that needs two modalities falls back to concat for one."""
    points = []
    for modality in MODALITIES:
        point_cfg = copy.deepcopy(cfg)
        point_cfg.model.modality = modality
        if not supports(point_cfg.model.head.fusion, modality):
            point_cfg.model.head.fusion = "concat"
        points.append(Point(modality, point_cfg, {"fusion": point_cfg.model.head.fusion}))
    return points


def run_ablation(cfg: Config, run_dir: str | Path, train_fn: Callable | None = None) -> list[dict]:
    """Train (or skip, if finished) the three points; write ablation.md / ablation.json (rank 0)."""
    if train_fn is None:
        from msa_dist.engine.trainer import train as train_fn
    run_dir = Path(run_dir)
    points = ablation_points(cfg)
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        fallback = [p.name for p in points if p.cfg.model.head.fusion != cfg.model.head.fusion]
        if fallback:
            console.print(
                f"fusion={cfg.model.head.fusion} needs both modalities: the {' and '.join(fallback)} "
                "rows use fusion=concat"
            )
    results, complete = run_points(points, run_dir, train_fn)
    if not is_main_process():
        return []
    rows = [result_row(r) for r in results]
    title = f"ablation of {cfg.model.head.fusion} fusion, seed {cfg.train.seed}: val metrics of each best checkpoint"
    console.print(rich_table(title, *transpose(TABLE_COLUMNS[1:], rows)))
    note = "" if complete else "\n**Incomplete**: a point was preempted; run the same command again.\n"
    write_atomic(
        run_dir / "ablation.md",
        f"# Ablation\n\n{title}.\n{note}\n{markdown_table(TABLE_COLUMNS, rows)}\n"
        + "".join(f"- [{r['point']}]({r['point']}/report.md)\n" for r in rows),
    )
    write_atomic(run_dir / "ablation.json", json.dumps({"complete": complete, "rows": rows}, indent=1))
    console.print(f"wrote {run_dir / 'ablation.md'} and ablation.json")
    return rows
