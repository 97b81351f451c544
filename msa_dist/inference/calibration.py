"""Prior / threshold adjustment: per-class offsets added to the log-probabilities before the argmax,
tuned on a labelled split (val) to maximise macro-F1, saved as RUN_DIR/logit_offsets.json.

The minority class (neutral, ~10%) is rarely the argmax of a model trained on the raw class mix;
shifting its log-probability trades some accuracy for recall on it. Offsets tuned on val and
measured on val are optimistic: report the tuned numbers on another split.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from msa_dist.common.atomic import write_atomic
from msa_dist.common.errors import MsaDistError
from msa_dist.common.jsonfile import read_json_object
from msa_dist.common.labels import LABELS, NUM_CLASSES
from msa_dist.engine.evaluation import split_outputs
from msa_dist.engine.metrics import confusion_matrix, metrics_from_confusion
from msa_dist.engine.runtime import DistEnv

OFFSETS_FILE = "logit_offsets.json"
GRID = torch.arange(-3.0, 3.0001, 0.05)  # candidate offsets, in nats


def collect_log_probs(
    cfg, model, tokenizer, device: torch.device, shard_dir: str, split: str, batch_size: int = 64
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(keys, log-probabilities [N, C], labels [N]; -1 where unlabelled) of one split, in one process."""
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=device)
    out = split_outputs(cfg, model, tokenizer, env, split, batch_size, shard_dir, complete=True)
    if not out.keys:
        raise MsaDistError(f"split '{split}' in {shard_dir} is empty")
    return out.keys, torch.log_softmax(out.logits, dim=-1), out.labels


def _macro_f1(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Macro-F1 of each row of `preds` [K, N] against `labels` [N] -> [K]."""
    onehot_pred = torch.nn.functional.one_hot(preds, NUM_CLASSES).float()  # [K, N, C]
    onehot_true = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()  # [N, C]
    tp = (onehot_pred * onehot_true).sum(1)
    predicted, support = onehot_pred.sum(1), onehot_true.sum(0)
    return (2 * tp / (predicted + support).clamp(min=1)).mean(-1)


def tune_offsets(log_probs: torch.Tensor, labels: torch.Tensor, rounds: int = 3) -> torch.Tensor:
    """Per-class offsets maximising macro-F1 (coordinate ascent over GRID; class 0 stays at 0).

    Ties keep the smaller change, so offsets stay at 0 unless they help.
    """
    if (labels < 0).any():
        raise MsaDistError("tuning logit offsets needs a labelled split (val)")
    offsets = torch.zeros(NUM_CLASSES)
    best = _macro_f1((log_probs + offsets).argmax(-1)[None], labels)[0]
    for _ in range(rounds):
        for c in range(1, NUM_CLASSES):
            candidates = offsets.repeat(len(GRID), 1)
            candidates[:, c] = GRID
            scores = _macro_f1((log_probs[None] + candidates[:, None, :]).argmax(-1), labels)
            # prefer the higher score, then the offset closest to the current one
            order = sorted(
                range(len(GRID)), key=lambda k: (-round(float(scores[k]), 9), abs(float(GRID[k] - offsets[c])))
            )
            if scores[order[0]] > best:
                best, offsets = scores[order[0]], candidates[order[0]].clone()
    return offsets


def adjusted_metrics(log_probs: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor) -> dict:
    """The usual metrics dict of argmax(log_probs + offsets)."""
    return metrics_from_confusion(confusion_matrix(labels, (log_probs + offsets).argmax(-1)))


def save_offsets(run_dir: str | Path, offsets: torch.Tensor, info: dict) -> Path:
    path = Path(run_dir) / OFFSETS_FILE
    write_atomic(
        path, json.dumps({"offsets": {k: round(v, 4) for k, v in zip(LABELS, offsets.tolist())}, **info}, indent=1)
    )
    return path


def load_offsets(run_dir: str | Path) -> torch.Tensor | None:
    """The saved offsets in LABELS order, or None; one line naming the file when it is broken."""
    path = Path(run_dir) / OFFSETS_FILE
    if not path.exists() and not path.is_symlink():
        return None
    saved = read_json_object(path).get("offsets")
    values = [saved.get(name) for name in LABELS] if isinstance(saved, dict) else []
    if len(values) != len(LABELS) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= 100 for v in values
    ):
        raise MsaDistError(f"{path}: 'offsets' must map {', '.join(LABELS)} to numbers: fix or delete the file")
    return torch.tensor([float(v) for v in values])
