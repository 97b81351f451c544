"""The training loss, chosen by config."""
from __future__ import annotations

from typing import Optional

import torch

from msa_dist.config import TrainConfig


def build_loss(cfg: TrainConfig, class_weights: Optional[torch.Tensor]) -> torch.nn.Module:
    """Cross-entropy, optionally class-weighted and label-smoothed."""
    return torch.nn.CrossEntropyLoss(weight=class_weights if cfg.class_weighting else None,
                                     label_smoothing=cfg.label_smoothing)
