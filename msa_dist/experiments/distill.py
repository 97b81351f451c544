"""`msa-dist distill`: a seed ensemble of teachers distilled into one student of the same recipe.

The teachers are ordinary runs of the config, one per teacher seed. Their averaged probabilities
on the train split (each teacher's last-epoch model, evaluation transforms) are written as a
teacher file (engine/teacher.py), and one student run trains on it with `train.teacher` set.

With `--folds K` everything happens per fold of `msa-dist cv` (the same folds for the same
`--fold-seed`): fold F's teachers are that fold's seed runs, trained on its training part only;
its teacher file holds their probabilities on that training part; its student trains on the same
part. So no model behind a fold's student has seen the fold's held-out part, and the held-out
scores of the single teachers, the ensemble and the student are comparable. Without `--folds`,
the split's val part is only scored, never used to choose. Nothing reads the test split.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch

from msa_dist.common.atomic import write_atomic
from msa_dist.common.display import console
from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import Config
from msa_dist.engine.teacher import write_teacher_file
from msa_dist.experiments.cv import ensemble_probs, fold_numbers, model_log_probs, run_cv
from msa_dist.experiments.folds import fold_dir
from msa_dist.experiments.points import Point, is_main_process, run_points
from msa_dist.experiments.tables import SCORE_KEYS, Column, markdown_table, mean_std, rich_table, scores

TEACHERS, STUDENT = "teachers", "student"


def run_distill(
    cfg: Config,
    run_dir: str | Path,
    teacher_seeds: list[int],
    folds: int = 0,
    fold_seed: int = 0,
    train_fn: Callable | None = None,
    show: bool = True,
    only: list[int] | None = None,
) -> dict | None:
    """Teachers, teacher file(s), student; writes distill.md / distill.json; None if a run was preempted.
    `only` (with folds): these folds alone."""
    from msa_dist.engine.runtime import read_env

    if len(teacher_seeds) < 2:
        raise MsaDistError("--teacher-seeds: give at least 2 seeds, e.g. 1,2,3 (one teacher is no ensemble)")
    if cfg.train.teacher:
        raise MsaDistError("train.teacher is set: msa-dist distill writes the teacher file itself; drop the override")
    if read_env(cfg.backend.device).world_size > 1:
        raise MsaDistError("msa-dist distill runs in one process (it writes teacher files between runs): no torchrun")
    if train_fn is None:
        from msa_dist.engine.trainer import train as train_fn
    if only is not None and not folds:
        raise MsaDistError("--only-folds needs --folds K")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if folds:
        summary = _distill_cv(cfg, run_dir, teacher_seeds, folds, fold_seed, train_fn, show, only)
    else:
        summary = _distill_split(cfg, run_dir, teacher_seeds, train_fn)
    if summary is not None:
        write_distill_report(summary, run_dir, show)
    return summary


def _distill_cv(
    cfg, run_dir: Path, seeds: list[int], k: int, fold_seed: int, train_fn, show: bool, only: list[int] | None
) -> dict | None:
    """Per fold: its seed runs as teachers, their probabilities on its training part, its student."""
    folds_root = run_dir / "folds"
    common = dict(folds_root=folds_root, train_fn=train_fn, show=show, only=only)
    teachers = run_cv(cfg, run_dir / TEACHERS, k, seeds, fold_seed, **common)
    if not teachers["finished"]:
        return None
    files = {}
    folds = fold_numbers(k, only)
    for fold in folds:
        members = [str(run_dir / TEACHERS / f"fold-{fold}-seed-{seed}") for seed in seeds]
        files[fold] = teacher_file(members, str(fold_dir(folds_root, fold)), run_dir / TEACHERS / f"fold-{fold}.json")

    def configure(point_cfg: Config, fold: int) -> None:
        point_cfg.train.teacher = str(files[fold].resolve())

    student = run_cv(cfg, run_dir / STUDENT, k, [cfg.train.seed], fold_seed, configure=configure, **common)
    if not student["finished"]:
        return None
    per_fold = teachers["train_seconds"] / len(folds)
    which = "" if only is None else f", folds {','.join(map(str, folds))} only"
    return {
        "mode": f"{k}-fold CV (fold seed {fold_seed}{which}), each fold's held-out part",
        "teacher_seeds": seeds,
        "student_seed": cfg.train.seed,
        "rows": {
            "one teacher": teachers["mean"],
            f"ensemble of {len(seeds)} teachers": teachers["seed_ensemble_mean"],
            "student": student["mean"],
        },
        "seconds": {
            "one teacher": per_fold / len(seeds),
            f"ensemble of {len(seeds)} teachers": per_fold,
            "student": student["train_seconds"] / len(folds),
        },
        "seconds_are": "per fold, summed over the models behind the row",
        "distill": _distill_keys(cfg),
    }


def _distill_split(cfg: Config, run_dir: Path, seeds: list[int], train_fn) -> dict | None:
    """The teachers and the student on data.shards' train split, scored on its val split."""
    points = []
    for seed in seeds:
        point_cfg = copy.deepcopy(cfg)
        point_cfg.train.seed = seed
        points.append(Point(f"seed-{seed}", point_cfg, {"seed": seed}))
    results, complete = run_points(points, run_dir / TEACHERS, train_fn)
    if not complete:
        return None
    members = [str(p.directory(run_dir / TEACHERS)) for p in points]
    path = teacher_file(members, cfg.data.shards, run_dir / TEACHERS / "teacher.json")
    student_cfg = copy.deepcopy(cfg)
    student_cfg.train.teacher = str(path.resolve())
    student_results, complete = run_points([Point(STUDENT, student_cfg)], run_dir, train_fn)
    if not complete:
        return None
    val = {m: model_log_probs(m, cfg.data.shards, "val") for m in members}
    teacher_rows = [_scores([val[m][:2]], val[m][2]) for m in members]
    keys, log_probs, labels = model_log_probs(run_dir / STUDENT, cfg.data.shards, "val")
    seconds = [r.get("train_seconds") or 0.0 for r in results]
    return {
        "mode": f"the val split of {cfg.data.shards}",
        "teacher_seeds": seeds,
        "student_seed": cfg.train.seed,
        "rows": {
            "one teacher": mean_std(teacher_rows),
            f"ensemble of {len(seeds)} teachers": _scores([v[:2] for v in val.values()], labels, keys),
            "student": _scores([(keys, log_probs)], labels, keys),
        },
        "seconds": {
            "one teacher": sum(seconds) / len(seconds),
            f"ensemble of {len(seeds)} teachers": sum(seconds),
            "student": student_results[0].get("train_seconds") or 0.0,
        },
        "seconds_are": "summed over the models behind the row",
        "distill": _distill_keys(cfg),
    }


def teacher_file(members: list[str], shard_dir: str, path: Path) -> Path:
    """The members' averaged probabilities on `shard_dir`'s train split, written once to `path`."""
    if not path.is_file() and is_main_process():
        keys, probs = ensemble_probs([model_log_probs(m, shard_dir, "train")[:2] for m in members])
        write_teacher_file(path, keys, probs, {"members": members, "shards": str(shard_dir), "split": "train"})
    return path


def _scores(members: list[tuple], labels: torch.Tensor, keys: list[str] | None = None) -> dict:
    """Scores of the members' averaged probabilities against `labels` (given in the order of `keys`,
    or of the first member's keys)."""
    from msa_dist.engine.metrics import confusion_matrix, metrics_from_confusion

    order = keys or members[0][0]
    label_of = dict(zip(order, labels.tolist()))
    ens_keys, probs = ensemble_probs(members)
    truth = torch.tensor([label_of[key] for key in ens_keys])
    return scores(metrics_from_confusion(confusion_matrix(truth, probs.argmax(-1))))


def _distill_keys(cfg: Config) -> dict:
    return {"weight": cfg.train.distill_weight, "temperature": cfg.train.distill_temperature}


COLUMNS = (
    [Column("model", "model")]
    + [Column(k, k.replace(".f1", " F1").replace("macro_f1", "macro-F1"), str, True) for k in SCORE_KEYS]
    + [Column("seconds", "train s", str, True)]
)


def write_distill_report(summary: dict, run_dir: Path, show: bool = True) -> None:
    """distill.md and distill.json: one teacher, the ensemble and the student side by side."""
    rows = []
    for name, row in summary["rows"].items():
        cells = {k: _cell(row, k) for k in SCORE_KEYS} if row else dict.fromkeys(SCORE_KEYS, "")
        rows.append({"model": name, **cells, "seconds": f"{summary['seconds'][name]:.0f}"})
    d = summary["distill"]
    title = (
        f"Ensemble vs student on {summary['mode']}: teachers seeds {summary['teacher_seeds']}, student seed "
        f"{summary['student_seed']}, distill weight {d['weight']}, temperature {d['temperature']}; "
        f"train s: {summary['seconds_are']}"
    )
    if show:
        console.print(rich_table(title, COLUMNS, rows))
    write_atomic(run_dir / "distill.md", f"# Distillation\n\n{title}.\n\n{markdown_table(COLUMNS, rows)}")
    write_atomic(run_dir / "distill.json", json.dumps(summary, indent=1))
    if show:
        console.print(f"wrote {run_dir / 'distill.md'} and distill.json")


def _cell(row: dict, key: str) -> str:
    std = row.get(key + ".std")
    return f"{row[key]:.4f}" if std is None else f"{row[key]:.4f} ± {std:.4f}"
