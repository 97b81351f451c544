"""AdamW with one learning rate per part (text, image, bow, head) and a warmup-then-decay schedule."""

from __future__ import annotations

import math

import torch

from msa_dist.config.schema import OptimConfig
from msa_dist.models.layers import split_group_key


def _split_decay(params: list[torch.nn.Parameter]) -> tuple[list, list]:
    # Biases and norm weights (1-d tensors) get no weight decay.
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return decay, no_decay


def optimizer_param_groups(cfg: OptimConfig, groups: dict[str, list[torch.nn.Parameter]]) -> list[dict]:
    """AdamW parameter groups: each part's own lr, decay only on matrices.

    A key `part*scale` (layer-wise lr decay, see `msa_dist.models.layers`) gets the part's lr times scale.
    """
    lrs = {"text": cfg.text_lr, "image": cfg.image_lr, "bow": cfg.bow_lr, "head": cfg.lr}
    out = []
    for key, params in groups.items():
        part, scale = split_group_key(key)
        decay, no_decay = _split_decay(params)
        for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if ps:
                out.append(
                    {
                        "params": ps,
                        "lr": lrs[part] * scale,
                        "weight_decay": wd,
                        "name": f"{key}{'' if wd else '_no_decay'}",
                    }
                )
    return out


def build_optimizer(cfg: OptimConfig, groups: dict[str, list[torch.nn.Parameter]]) -> torch.optim.Optimizer:
    """AdamW over the model's parameter groups."""
    kwargs = {"fused": True} if cfg.fused else {}
    return torch.optim.AdamW(optimizer_param_groups(cfg, groups), betas=tuple(cfg.betas), **kwargs)


def lr_factor(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step `step`: linear warmup, then the chosen decay."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """A LambdaLR following `lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step, total_steps))
