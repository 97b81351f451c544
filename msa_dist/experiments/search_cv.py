"""A search trial scored by k-fold CV (`msa-dist search --cv K`): the folds one at a time, pruned
between them on the running mean of their out-of-fold metric; the trial's cv.md as `msa-dist cv`
writes it."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from msa_dist.common.labels import LABELS
from msa_dist.config.schema import Config
from msa_dist.experiments.cv import cv_points, out_of_fold, run_cv
from msa_dist.experiments.folds import build_folds
from msa_dist.experiments.points import is_main_process, run_points


def prepare_folds(cfg: Config, run_dir: Path, k: int, main: bool) -> dict:
    """RUN_DIR/folds, written once by rank 0 and shared by every trial."""
    folds_root = Path(run_dir) / "folds"
    if main:
        build_folds(cfg.data.shards, folds_root, k, 0)
    return {"k": k, "folds_root": folds_root}


def fold_score(point_dir: Path, fold_shards: str, metric: str) -> float:
    """A finished fold run's metric on its held-out part (its last epoch's model, as `cv` scores it)."""
    from msa_dist.inference.calibration import adjusted_metrics

    oof = out_of_fold(point_dir, fold_shards)
    return float(adjusted_metrics(oof["log_probs"], oof["labels"], torch.zeros(len(LABELS)))[metric])


def run_cv_trial(cfg: Config, trial_dir: Path, pruning, train_fn: Callable, cv: dict) -> dict:
    """Train the folds in order; after each, report the running mean and stop if the pruner says so."""
    main, k = is_main_process(), cv["k"]
    points = cv_points(cfg, cv["folds_root"], k, [cfg.train.seed])
    fold_values: list[float] = []
    for fold, point in enumerate(points):
        results, complete = run_points([point], trial_dir, train_fn)
        if not complete:
            return {"status": "preempted"}
        if main:
            fold_values.append(fold_score(point.directory(trial_dir), point.cfg.data.shards, pruning.metric))
        running = statistics.fmean(fold_values) if main else 0.0
        if fold < k - 1 and pruning(running, fold):
            return {"status": "pruned", "folds": fold_values}
    if main:  # every fold is finished: this only writes the trial's cv.md / cv.json
        run_cv(cfg, trial_dir, k, folds_root=cv["folds_root"], train_fn=train_fn, show=False)
    return {"status": "finished", "value": statistics.fmean(fold_values) if main else None, "folds": fold_values}
