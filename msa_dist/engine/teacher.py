"""A teacher's class probabilities per sample guid (`train.teacher`), read safely, and the
training targets that carry them next to the hard labels.

The file is JSON (never pickle: it may come from elsewhere), of bounded size, a regular file:

    {"format": "msa-dist-teacher", "version": 1, "labels": ["positive", "neutral", "negative"],
     "probs": {"<guid>": [p_positive, p_neutral, p_negative], ...}, ...}

Each row holds finite probabilities summing to 1 (within 1e-3). Every guid of the train split
must have a row; extra rows (other splits, other folds) are ignored. A file that breaks any of
this is refused in one line naming it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.common.jsonfile import file_error, read_run_bytes
from msa_dist.common.labels import LABELS

FORMAT, VERSION = "msa-dist-teacher", 1
MAX_TEACHER_BYTES = 256 << 20  # ~4 M samples' rows; the MVSA sets need well under 1 MB


@dataclass
class SoftTargets:
    """A micro batch's hard labels and its teacher probabilities, indexed together (mixup permutes both)."""

    labels: torch.Tensor  # [B] class indices
    probs: torch.Tensor  # [B, C] the teacher's probabilities

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index) -> SoftTargets:
        return SoftTargets(self.labels[index], self.probs[index])


def hard_labels(batch: dict, device: torch.device) -> torch.Tensor:
    """The default targets: the batch's labels on the device."""
    return batch["labels"].to(device, non_blocking=device.type == "cuda")


class TeacherTargets:
    """Targets for distillation: the labels with the teacher's row for each sample of the batch."""

    def __init__(self, table: dict[str, list[float]]):
        self.index = {guid: i for i, guid in enumerate(table)}
        self.probs = torch.tensor(list(table.values()), dtype=torch.float32)

    def __call__(self, batch: dict, device: torch.device) -> SoftTargets:
        rows = self.probs[[self.index[key] for key in batch["keys"]]]  # every train guid checked at load
        return SoftTargets(hard_labels(batch, device), rows.to(device, non_blocking=device.type == "cuda"))


def load_teacher(path: str | Path, guids: list[str]) -> TeacherTargets:
    """The teacher file at `path`, checked, covering every guid in `guids` (the train split's)."""
    table = read_teacher_file(path)
    missing = [guid for guid in guids if guid not in table]
    if missing:
        raise MsaDistError(
            f"teacher file {path} has no probabilities for {len(missing)} of the {len(guids)} train samples "
            f"(e.g. {', '.join(repr(g) for g in missing[:3])}): write it for these shards (`msa-dist distill`)"
        )
    return TeacherTargets({guid: table[guid] for guid in guids})


def read_teacher_file(path: str | Path) -> dict[str, list[float]]:
    """guid -> probabilities in LABELS order; MsaDistError in one line naming the file and the fault."""

    def bad(why: str) -> MsaDistError:
        return MsaDistError(f"teacher file {path} is not usable: {why}")

    try:
        data = json.loads(read_run_bytes(path, MAX_TEACHER_BYTES))
    except (OSError, ValueError, RecursionError) as exc:
        raise bad(f"not readable JSON ({file_error(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise bad(f'not a {FORMAT} file of version {VERSION} ("format" and "version" keys)')
    if data.get("labels") != list(LABELS):
        raise bad(f'"labels" must be {list(LABELS)}, in that order; got {str(data.get("labels"))[:80]}')
    probs = data.get("probs")
    if not isinstance(probs, dict) or not probs:
        raise bad('"probs" must map each sample guid to its probabilities')
    for guid, row in probs.items():
        if not _is_distribution(row):
            raise bad(f"the row of {guid[:80]!r} is not {len(LABELS)} probabilities summing to 1: {str(row)[:80]}")
    return probs


def _is_distribution(row) -> bool:
    if not isinstance(row, list) or len(row) != len(LABELS):
        return False
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and p >= 0 for p in row):
        return False
    return abs(sum(row) - 1.0) <= 1e-3


def write_teacher_file(path: str | Path, keys: list[str], probs: torch.Tensor, info: dict) -> None:
    """Write `probs` [N, C] by guid in the format above (6 decimals, renormalised after rounding)."""
    from msa_dist.common.atomic import write_atomic

    rows = probs.double().clamp(min=0)
    rows = (rows / rows.sum(-1, keepdim=True)).tolist()
    table = {key: [round(p, 6) for p in row] for key, row in zip(keys, rows)}
    payload = {"format": FORMAT, "version": VERSION, "labels": list(LABELS), **info, "probs": table}
    write_atomic(Path(path), json.dumps(payload))
