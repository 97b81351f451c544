"""The training loss, chosen by config: cross-entropy or focal loss, either class-weighted and label-smoothed;
with `train.teacher`, blended with a KL divergence to a teacher's probabilities (distillation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msa_dist.config.schema import TrainConfig
from msa_dist.data.format.manifest import load_manifest
from msa_dist.engine.teacher import SoftTargets, hard_labels, load_teacher


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


class DistillLoss(torch.nn.Module):
    """(1 - weight) x the hard-label loss + weight x T^2 x KL(teacher_T || student_T) (Hinton et al., 2015).

    Both distributions are softened at temperature T: the student's as softmax(logits / T), the
    teacher's as softmax(log p / T). T^2 keeps the KL term's gradients on the hard loss's scale.
    Class weights and label smoothing act on the hard loss only."""

    def __init__(self, hard: torch.nn.Module, weight: float, temperature: float):
        super().__init__()
        self.hard, self.weight, self.temperature = hard, weight, temperature

    def forward(self, logits: torch.Tensor, target: SoftTargets) -> torch.Tensor:
        t = self.temperature
        teacher = torch.softmax(target.probs.clamp(min=1e-8).log() / t, dim=-1)
        soft = F.kl_div(F.log_softmax(logits / t, dim=-1), teacher, reduction="batchmean") * (t * t)
        return (1.0 - self.weight) * self.hard(logits, target.labels) + self.weight * soft


def build_objective(cfg: TrainConfig, hard: torch.nn.Module, shard_dir: str) -> tuple:
    """(loss, targets) for `TrainStep`: the hard-label loss `hard` and `hard_labels`, or with `train.teacher`
    the distillation loss around it and the teacher's rows (checked to cover every guid of the train split)."""
    if not cfg.teacher:
        return hard, hard_labels
    guids = load_manifest(shard_dir)["splits"].get("train", {}).get("guids", [])
    return DistillLoss(hard, cfg.distill_weight, cfg.distill_temperature), load_teacher(cfg.teacher, guids)
