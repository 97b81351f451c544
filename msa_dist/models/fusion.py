"""Fusion heads: pooled text and image features -> class logits. `FUSIONS` maps model.head.fusion to a class."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from msa_dist.config import HeadConfig
from msa_dist.errors import MsaDistError
from msa_dist.labels import NUM_CLASSES

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class ConcatFusionHead(nn.Module):
    """Project each present modality to `proj_dim`, concatenate, then an MLP to NUM_CLASSES logits."""

    def __init__(self, cfg: HeadConfig, text_dim: Optional[int], image_dim: Optional[int],
                 activation: str = "gelu"):
        super().__init__()
        if text_dim is None and image_dim is None:
            raise ValueError("a fusion head needs at least one modality")
        act = ACTIVATIONS[activation]
        self.text_proj = nn.Sequential(nn.Linear(text_dim, cfg.proj_dim), act()) if text_dim is not None else None
        self.image_proj = nn.Sequential(nn.Linear(image_dim, cfg.proj_dim), act()) if image_dim is not None else None
        width = cfg.proj_dim * ((text_dim is not None) + (image_dim is not None))
        mlp: list[nn.Module] = []
        for _ in range(cfg.layers):
            mlp += [nn.Dropout(cfg.dropout), nn.Linear(width, cfg.hidden), act()]
            width = cfg.hidden
        mlp += [nn.Dropout(cfg.dropout), nn.Linear(width, NUM_CLASSES)]
        self.mlp = nn.Sequential(*mlp)

    def forward(self, text_emb: Optional[torch.Tensor] = None,
                image_emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        parts = []
        if self.text_proj is not None:
            parts.append(self.text_proj(text_emb))
        if self.image_proj is not None:
            parts.append(self.image_proj(image_emb))
        return self.mlp(torch.cat(parts, dim=-1))


# Each variant is built as `cls(cfg, text_dim, image_dim)` and called as `head(text_emb, image_emb)`.
# A new name must also be added to EXTRA_CHOICES["model.head.fusion"] in config.py.
FUSIONS: dict[str, type[nn.Module]] = {"concat": ConcatFusionHead}


def build_head(cfg: HeadConfig, text_dim: Optional[int], image_dim: Optional[int]) -> nn.Module:
    """Build the fusion head for the modalities present (None for an absent one)."""
    if cfg.fusion not in FUSIONS:
        raise MsaDistError(f"config key 'model.head.fusion' must be one of {', '.join(FUSIONS)}; got {cfg.fusion!r}")
    if cfg.layers < 0:
        raise MsaDistError(f"config key 'model.head.layers' must be >= 0; got {cfg.layers}")
    return FUSIONS[cfg.fusion](cfg, text_dim, image_dim)
