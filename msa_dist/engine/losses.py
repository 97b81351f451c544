"""The training loss, chosen by config: cross-entropy or focal loss, either class-weighted and label-smoothed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msa_dist.config.schema import TrainConfig


class FocalLoss(torch.nn.Module):
    """Focal loss (Lin et al., 2017): cross-entropy scaled by (1 - p_true)^gamma, so samples the model
    already gets right count less. Class weights and label smoothing act as in `CrossEntropyLoss`
    (the weighted mean divides by the summed weights of the batch's targets)."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, weight=self.weight, reduction="none", label_smoothing=self.label_smoothing)
        p_true = torch.softmax(logits, dim=-1).gather(1, target.unsqueeze(1)).squeeze(1)
        loss = (1 - p_true).clamp(min=0).pow(self.gamma) * ce
        if self.weight is None:
            return loss.mean()
        return loss.sum() / self.weight[target].sum()


def build_loss(cfg: TrainConfig, class_weights: torch.Tensor | None) -> torch.nn.Module:
    """Cross-entropy or focal loss (`train.loss`), optionally class-weighted and label-smoothed.

    `class_weights` are inverse class frequencies (mean-normalised); `train.class_weight_power` tempers them.
    """
    weight = None
    if cfg.class_weighting and class_weights is not None:
        # no renormalising: both losses divide by the summed weights of the batch's targets
        weight = class_weights if cfg.class_weight_power == 1 else class_weights.pow(cfg.class_weight_power)
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma, weight, cfg.label_smoothing)
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
