"""`evaluate` and `predict` from a finished run directory, in one process, without any backend."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch

from msa_dist.common.atomic import atomic_open
from msa_dist.common.csv_cells import escape_row
from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import LABELS
from msa_dist.data.format.manifest import load_manifest
from msa_dist.engine.checkpoint.files import model_weights_path
from msa_dist.engine.evaluation import run_split
from msa_dist.engine.run.artifacts import load_run_config, load_trained_model
from msa_dist.engine.run.provenance import check_shards
from msa_dist.engine.runtime import read_env
from msa_dist.inference.calibration import adjusted_metrics, collect_log_probs, load_offsets, save_offsets, tune_offsets

FORMATS = ("probs", "course")


def write_predictions(
    out: str | Path, rows: Sequence[tuple[str, list[float]]], labels: Sequence[str], fmt: str = "probs"
) -> None:
    """CSV of id, tag and one `prob_<label>` column per class (`course`: guid,tag only), written atomically."""
    if fmt not in FORMATS:
        raise MsaDistError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out_path, "w", newline="") as f:  # its temp file is new: never a link planted beside out
        writer = csv.writer(f)
        if fmt == "course":
            writer.writerow(["guid", "tag"])
            writer.writerows(escape_row((key, labels[int(torch.tensor(p).argmax())])) for key, p in rows)
        else:
            writer.writerow(escape_row(["id", "tag", *(f"prob_{label}" for label in labels)]))
            writer.writerows(
                escape_row((key, labels[int(torch.tensor(p).argmax())], *(f"{x:.6f}" for x in p))) for key, p in rows
            )


def _load(run_dir: str, which: str, device: str = "auto"):
    env = read_env(device)
    cfg, tokenizer, model = load_trained_model(Path(run_dir), model_weights_path(Path(run_dir), which), env.device)
    # One process reads the whole split, whatever the training world was.
    env = type(env)(rank=0, local_rank=0, world_size=1, device=env.device)
    return env, cfg, tokenizer, model


def run_shards(run_dir: str, shard_dir: str | None) -> str:
    """`shard_dir`, or the shards the run was trained on (its data.shards) when None."""
    return shard_dir if shard_dir is not None else load_run_config(Path(run_dir)).data.shards


def calibrate(run_dir: str, shard_dir: str, split: str = "val", which: str = "best", batch_size: int = 64) -> dict:
    """Tune per-class logit offsets on a labelled split for macro-F1; save them in the run dir."""
    env, cfg, tokenizer, model = _load(run_dir, which)
    _, log_probs, labels = collect_log_probs(cfg, model, tokenizer, env.device, shard_dir, split, batch_size)
    offsets = tune_offsets(log_probs, labels)
    before = adjusted_metrics(log_probs, labels, torch.zeros_like(offsets))
    after = adjusted_metrics(log_probs, labels, offsets)
    info = {
        "tuned_on": split,
        "checkpoint": which,
        "shards": str(shard_dir),
        "before": {k: before[k] for k in ("accuracy", "macro_f1")},
        "after": {k: after[k] for k in ("accuracy", "macro_f1")},
    }
    save_offsets(run_dir, offsets, info)
    return {"offsets": {k: round(v, 4) for k, v in zip(LABELS, offsets.tolist())}, **info}


def _offsets(run_dir: str, shard_dir: str, which: str, batch_size: int) -> torch.Tensor:
    offsets = load_offsets(run_dir)
    if offsets is None:
        calibrate(run_dir, shard_dir, "val", which, batch_size)
        offsets = load_offsets(run_dir)
    return offsets


def evaluate(
    run_dir: str,
    shard_dir: str,
    split: str = "val",
    which: str = "best",
    batch_size: int = 64,
    adjust: bool = False,
    hflip: bool = False,
) -> dict:
    """Metrics of the run's `which` checkpoint on a labelled split (`adjust`: with the tuned logit
    offsets; `hflip`: the mean logits of each image and its mirror, whatever the run's data.eval_hflip)."""
    if adjust and hflip:
        raise MsaDistError("--hflip with --adjust: the offsets are tuned on unflipped logits; use one of them")
    check_shards(run_dir, shard_dir, split)  # one warning line when val is not the data the run was validated on
    if adjust:
        offsets = _offsets(run_dir, shard_dir, which, batch_size)
        env, cfg, tokenizer, model = _load(run_dir, which)
        _, log_probs, labels = collect_log_probs(cfg, model, tokenizer, env.device, shard_dir, split, batch_size)
        if (labels < 0).any():
            raise MsaDistError(f"split '{split}' in {shard_dir} has no labels: use `msa-dist predict` for it")
        return adjusted_metrics(log_probs, labels, offsets)
    env, cfg, tokenizer, model = _load(run_dir, which)
    cfg.data.eval_hflip = cfg.data.eval_hflip or hflip
    metrics, _ = run_split(cfg, model, tokenizer, env, None, split, batch_size, shard_dir=shard_dir, complete=True)
    if metrics is None:
        raise MsaDistError(f"split '{split}' in {shard_dir} has no labels: use `msa-dist predict` for it")
    return metrics


def predict(
    run_dir: str,
    shard_dir: str,
    out: str,
    split: str = "test",
    which: str = "best",
    batch_size: int = 64,
    adjust: bool = False,
    fmt: str = "course",
) -> int:
    """Write `guid,tag` for every sample of `split`, in the order the shards were built from
    (`fmt="probs"`: id, tag and one probability column per class).

    `adjust` adds the logit offsets tuned on val (tuning them first if the run has none yet).
    """
    check_shards(run_dir, shard_dir, split)
    order = load_manifest(shard_dir)["splits"].get(split, {}).get("guids")
    offsets = _offsets(run_dir, shard_dir, which, batch_size) if adjust else torch.zeros(len(LABELS))
    env, cfg, tokenizer, model = _load(run_dir, which)
    _, predictions = run_split(cfg, model, tokenizer, env, None, split, batch_size, shard_dir=shard_dir, complete=True)
    # log(probs) + offsets: the same argmax as log_softmax(logits) + offsets
    by_key = {
        key: torch.softmax(torch.tensor(probs).clamp(min=1e-12).log() + offsets, -1).tolist()
        for key, probs in predictions
    }
    missing = [g for g in order if g not in by_key] if order else []
    if missing:
        raise MsaDistError(
            f"{len(missing)} samples of split '{split}' could not be read (first: {missing[0]}); "
            f"run `msa-dist shards verify {shard_dir}`"
        )
    keys = order or sorted(by_key)
    write_predictions(out, [(k, by_key[k]) for k in keys], LABELS, fmt)
    return len(keys)
