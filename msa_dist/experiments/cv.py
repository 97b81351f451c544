"""`msa-dist cv`: stratified k-fold cross-validation, one ordinary training run per fold (and seed).

The folds are shard sets of their own (experiments/folds.py) under RUN_DIR/folds; every fold run
is an experiment point (RUN_DIR/fold-F-seed-S), so a re-run skips finished folds like `sweep`, and
under torchrun every rank trains every fold. A fold is scored by its *last* epoch's model on its
held-out part: picking the best epoch on that part would tune on it. Those out-of-fold (OOF)
predictions are saved per fold (oof.json) and give mean ± std of accuracy, macro-F1 and per-class
F1; per-class logit offsets tuned on the other folds' OOF predictions give a second, honest row.
`--predict` averages the fold models' probabilities on the test split (an ensemble).
"""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Callable
from pathlib import Path

import torch

from msa_dist.common.atomic import write_atomic
from msa_dist.common.csv_cells import escape_row
from msa_dist.common.display import console
from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import LABELS
from msa_dist.config.schema import Config
from msa_dist.data.format.manifest import load_manifest
from msa_dist.experiments.folds import build_folds, fold_dir
from msa_dist.experiments.points import Point, is_main_process, run_points
from msa_dist.experiments.tables import SCORE_KEYS, Column, markdown_table, mean_std, rich_table, scores

OOF_FILE = "oof.json"
WEIGHTS = "latest"  # the last epoch's model (see the module docstring)


def fold_numbers(k: int, only: list[int] | None) -> list[int]:
    """The folds a run trains: all K, or `only`'s (sorted, once each)."""
    return list(range(k)) if only is None else sorted(set(only))


def cv_points(
    cfg: Config,
    folds_root: Path,
    k: int,
    seeds: list[int],
    configure: Callable | None = None,
    only: list[int] | None = None,
) -> list[Point]:
    """One point per (fold, seed): the config with data.shards = the fold's shard set (and
    `configure(config, fold)`'s changes: e.g. the fold's teacher file); `only`: these folds alone."""
    points = []
    for seed in seeds:
        for fold in fold_numbers(k, only):
            point_cfg = copy.deepcopy(cfg)
            point_cfg.data.shards = str(fold_dir(folds_root, fold).resolve())
            point_cfg.train.seed = seed
            if configure is not None:
                configure(point_cfg, fold)
            points.append(Point(f"fold-{fold}-seed-{seed}", point_cfg, {"fold": fold, "seed": seed}))
    return points


def run_cv(
    cfg: Config,
    run_dir: str | Path,
    k: int,
    seeds: list[int] | None = None,
    fold_seed: int = 0,
    predict_out: str | None = None,
    adjust: bool = False,
    folds_root: Path | None = None,
    train_fn: Callable | None = None,
    show: bool = True,
    configure: Callable | None = None,
    only: list[int] | None = None,
) -> dict | None:
    """Train the unfinished folds, then write cv.md / cv.json (and the ensemble's predictions) on rank 0.
    `only` trains and reports those folds alone (an incomplete CV: e.g. two processes or machines
    taking different folds of one run dir; a later run without it finds them finished)."""
    if train_fn is None:
        from msa_dist.engine.trainer import train as train_fn
    if k < 2:
        raise MsaDistError(f"--folds must be at least 2; got {k}")
    if only is not None and (not only or any(not 0 <= f < k for f in only)):
        raise MsaDistError(f"--only-folds takes fold numbers from 0 to {k - 1}; got {only}")
    run_dir = Path(run_dir)
    folds_root = Path(folds_root or run_dir / "folds")
    seeds = list(seeds) if seeds else [cfg.train.seed]
    source = cfg.data.shards
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        build_folds(source, folds_root, k, fold_seed)
        if show:
            console.print(f"cv: {k} folds (fold seed {fold_seed}) x seeds {seeds} of {source} in {run_dir}")
    # the other ranks wait in train()'s process-group setup until rank 0 has written the folds
    points = cv_points(cfg, folds_root, k, seeds, configure, only)
    results, finished = run_points(points, run_dir, train_fn)
    complete = finished and fold_numbers(k, only) == list(range(k))
    if not is_main_process():
        return None
    runs = [
        dict(
            r["values"],
            dir=str(p.directory(run_dir)),
            train_seconds=r.get("train_seconds"),
            **out_of_fold(p.directory(run_dir), p.cfg.data.shards),
        )
        for p, r in zip(points, results)
    ]
    summary = summarize(runs, complete, k, fold_seed, source)
    summary["folds_root"] = str(folds_root)
    summary["finished"] = finished  # every requested fold (all, or --only-folds) trained
    if complete and predict_out:
        summary["predict"] = predict_ensemble(
            [r["dir"] for r in runs], source, predict_out, summary["offsets"] if adjust else None
        )
    write_cv_report(summary, run_dir, show)
    return summary


def out_of_fold(point_dir: Path, fold_shards: str) -> dict:
    """The fold model's log-probabilities on its held-out part (computed once, saved as oof.json)."""
    path = Path(point_dir) / OOF_FILE
    if not path.is_file():
        keys, log_probs, labels = model_log_probs(point_dir, fold_shards, "val")
        write_atomic(path, json.dumps({"keys": keys, "log_probs": log_probs.tolist(), "labels": labels.tolist()}))
    saved = json.loads(path.read_text())
    return {
        "keys": saved["keys"],
        "log_probs": torch.tensor(saved["log_probs"]),
        "labels": torch.tensor(saved["labels"]),
    }


def model_log_probs(point_dir: str | Path, shard_dir: str, split: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(keys, log-probabilities, labels) of a finished run's last model on one split, in one process."""
    from msa_dist.engine.checkpoint.files import model_weights_path
    from msa_dist.engine.run.artifacts import load_trained_model
    from msa_dist.engine.runtime import read_env
    from msa_dist.inference.calibration import collect_log_probs

    device = read_env("auto").device
    cfg, tokenizer, model = load_trained_model(Path(point_dir), model_weights_path(Path(point_dir), WEIGHTS), device)
    return collect_log_probs(cfg, model, tokenizer, device, shard_dir, split)


def summarize(runs: list[dict], complete: bool, k: int, fold_seed: int, source: str) -> dict:
    """Per-run scores, their mean ± std, the same with offsets tuned on the other folds' OOF, and the
    offsets tuned on all OOF predictions (for `--predict --adjust`)."""
    from msa_dist.inference.calibration import adjusted_metrics, tune_offsets

    rows, adjusted = [], []
    for run in runs:
        zero = torch.zeros(len(LABELS))
        rows.append(
            {
                "fold": run["fold"],
                "seed": run["seed"],
                "train_seconds": run["train_seconds"],
                **scores(adjusted_metrics(run["log_probs"], run["labels"], zero)),
            }
        )
        others = [r for r in runs if r["seed"] == run["seed"] and r["fold"] != run["fold"]]
        if others:
            offsets = tune_offsets(
                torch.cat([r["log_probs"] for r in others]), torch.cat([r["labels"] for r in others])
            )
            adjusted.append(scores(adjusted_metrics(run["log_probs"], run["labels"], offsets)))
    offsets = (
        tune_offsets(torch.cat([r["log_probs"] for r in runs]), torch.cat([r["labels"] for r in runs]))
        if runs
        else torch.zeros(len(LABELS))
    )
    seed_ensembles = _seed_ensembles(runs)
    return {
        "complete": complete,
        "folds": k,
        "fold_seed": fold_seed,
        "source": str(source),
        "runs": rows,
        "mean": mean_std(rows) if rows else None,
        "adjusted_mean": mean_std(adjusted) if adjusted else None,
        "seed_ensemble_mean": mean_std(seed_ensembles) if seed_ensembles else None,
        "offsets": offsets.tolist(),
        "train_seconds": sum(r["train_seconds"] or 0.0 for r in rows),
    }


def _seed_ensembles(runs: list[dict]) -> list[dict]:
    """Per fold trained with several seeds: the scores of the seeds' averaged probabilities."""
    from msa_dist.engine.metrics import confusion_matrix, metrics_from_confusion

    rows = []
    for fold in sorted({r["fold"] for r in runs}):
        members = [r for r in runs if r["fold"] == fold]
        if len(members) < 2:
            continue
        keys, probs = ensemble_probs([(r["keys"], r["log_probs"]) for r in members])
        label_of = dict(zip(members[0]["keys"], members[0]["labels"].tolist()))
        labels = torch.tensor([label_of[key] for key in keys])
        rows.append(scores(metrics_from_confusion(confusion_matrix(labels, probs.argmax(-1)))))
    return rows


def ensemble_probs(members: list[tuple[list[str], torch.Tensor]]) -> tuple[list[str], torch.Tensor]:
    """The mean of the members' probabilities, aligned by key (every member must cover the same keys)."""
    keys = sorted(members[0][0])
    total = torch.zeros(len(keys), len(LABELS), dtype=torch.float64)
    for member_keys, log_probs in members:
        index = {key: i for i, key in enumerate(member_keys)}
        if set(index) != set(keys):
            raise MsaDistError("the fold models did not predict the same samples: run `msa-dist shards verify`")
        total += log_probs.double().exp()[[index[key] for key in keys]]
    return keys, (total / len(members)).float()


def predict_ensemble(
    run_dirs: list[str], shard_dir: str, out: str, offsets: list[float] | None = None, split: str = "test"
) -> dict:
    """Write `guid,tag` (argmax of the fold models' mean probabilities, plus `offsets` on their log) for `split`."""
    members = []
    for run_dir in run_dirs:
        keys, log_probs, _ = model_log_probs(run_dir, shard_dir, split)
        members.append((keys, log_probs))
    keys, probs = ensemble_probs(members)
    shift = torch.tensor(offsets if offsets is not None else [0.0] * len(LABELS))
    tags = dict(zip(keys, (LABELS[int(i)] for i in (probs.clamp(min=1e-12).log() + shift).argmax(-1))))
    order = load_manifest(shard_dir)["splits"][split].get("guids") or keys
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["guid", "tag"])
        writer.writerows(escape_row((key, tags[key])) for key in order)
    probs_path = out_path.with_suffix(".probs.json")
    probs_path.write_text(
        json.dumps(
            {
                "labels": list(LABELS),
                "members": run_dirs,
                "offsets": shift.tolist(),
                "probs": {k: [round(v, 6) for v in p] for k, p in zip(keys, probs.tolist())},
            }
        )
    )
    console.print(f"wrote {len(order)} ensemble predictions ({len(members)} models) to {out} and {probs_path}")
    return {"out": str(out), "samples": len(order), "members": len(members), "offsets": shift.tolist()}


def _fmt(row: dict, key: str) -> str:
    std = row.get(key + ".std")
    return f"{row[key]:.4f}" if std is None else f"{row[key]:.4f} ± {std:.4f}"


def cv_table_rows(summary: dict) -> list[dict]:
    """Rows of the report: each run, the mean ± std, the offsets row and the bag-of-words reference."""
    rows = [
        {
            "run": f"fold {r['fold']} seed {r['seed']}",
            **{k: f"{r[k]:.4f}" for k in SCORE_KEYS},
            "seconds": f"{r['train_seconds'] or 0:.0f}",
        }
        for r in summary["runs"]
    ]
    if summary["mean"]:
        rows.append(
            {
                "run": "mean ± std",
                **{k: _fmt(summary["mean"], k) for k in SCORE_KEYS},
                "seconds": f"{summary['train_seconds']:.0f}",
            }
        )
    if summary.get("seed_ensemble_mean"):
        rows.append(
            {"run": "seed ensemble per fold", **{k: _fmt(summary["seed_ensemble_mean"], k) for k in SCORE_KEYS}}
        )
    if summary["adjusted_mean"]:
        rows.append(
            {"run": "+ offsets (other folds' OOF)", **{k: _fmt(summary["adjusted_mean"], k) for k in SCORE_KEYS}}
        )
    if summary.get("baseline"):
        rows.append(
            {
                "run": "bag-of-words reference",
                **{k: _fmt(summary["baseline"]["mean"], k) for k in SCORE_KEYS},
                "seconds": f"{summary['baseline']['seconds']:.0f}",
            }
        )
    return rows


CV_COLUMNS = (
    [Column("run", "run")]
    + [Column(k, k.replace(".f1", " F1").replace("macro_f1", "macro-F1"), str, True) for k in SCORE_KEYS]
    + [Column("seconds", "train s", str, True)]
)


def write_cv_report(summary: dict, run_dir: Path, show: bool = True) -> None:
    """cv.md and cv.json in the run dir (with the bag-of-words reference on the same folds when available)."""
    from msa_dist.experiments.baseline import baseline_summary

    summary["baseline"] = baseline_summary(summary["folds_root"], summary["folds"])
    title = (
        f"{summary['folds']}-fold CV (fold seed {summary['fold_seed']}): last-epoch model of each fold on its "
        f"held-out part"
    )
    rows = cv_table_rows(summary)
    if show:
        console.print(rich_table(title, CV_COLUMNS, rows))
    note = (
        ""
        if summary["complete"]
        else "\n**Incomplete**: a fold was preempted or left out (--only-folds); run without it to finish.\n"
    )
    write_atomic(run_dir / "cv.md", f"# Cross-validation\n\n{title}.\n{note}\n{markdown_table(CV_COLUMNS, rows)}")
    write_atomic(run_dir / "cv.json", json.dumps(summary, indent=1))
    if show:
        console.print(f"wrote {run_dir / 'cv.md'} and cv.json")
