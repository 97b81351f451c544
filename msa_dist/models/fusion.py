"""Fusion heads: text and image features -> class logits. `FUSIONS` maps model.head.fusion to a class.

Each head is built as `cls(cfg, text_dim, image_dim)` (None for an absent modality); the modalities
each works with are `config.checks.FUSION_MODALITIES`, checked when the config is made. Most take
pooled features, `head(text_emb, image_emb)` with [B, dim] tensors; a head with `uses_tokens = True`
takes every token instead, `head(text_tokens, text_mask, image_tokens)`: [B, T, text_dim], [B, T]
(1 = real token), [B, R, image_dim].
"""

from __future__ import annotations

import torch
from torch import nn

from msa_dist.common.labels import NUM_CLASSES
from msa_dist.config.checks import FUSION_MODALITIES
from msa_dist.config.model_section import HeadConfig

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def classifier_mlp(cfg: HeadConfig, width: int, act: type[nn.Module] = nn.GELU) -> nn.Sequential:
    """`cfg.layers` hidden layers of `cfg.hidden` units, dropout before each Linear, then NUM_CLASSES logits."""
    mlp: list[nn.Module] = []
    for _ in range(cfg.layers):
        mlp += [nn.Dropout(cfg.dropout), nn.Linear(width, cfg.hidden), act()]
        width = cfg.hidden
    mlp += [nn.Dropout(cfg.dropout), nn.Linear(width, NUM_CLASSES)]
    return nn.Sequential(*mlp)


class ConcatFusionHead(nn.Module):
    """Project each present modality to `proj_dim`, concatenate, then an MLP to NUM_CLASSES logits."""

    def __init__(self, cfg: HeadConfig, text_dim: int | None, image_dim: int | None, activation: str = "gelu"):
        super().__init__()
        if text_dim is None and image_dim is None:
            raise ValueError("a fusion head needs at least one modality")
        act = ACTIVATIONS[activation]
        self.text_proj = nn.Sequential(nn.Linear(text_dim, cfg.proj_dim), act()) if text_dim is not None else None
        self.image_proj = nn.Sequential(nn.Linear(image_dim, cfg.proj_dim), act()) if image_dim is not None else None
        width = cfg.proj_dim * ((text_dim is not None) + (image_dim is not None))
        self.mlp = classifier_mlp(cfg, width, act)

    def forward(self, text_emb: torch.Tensor | None = None, image_emb: torch.Tensor | None = None) -> torch.Tensor:
        parts = []
        if self.text_proj is not None:
            parts.append(self.text_proj(text_emb))
        if self.image_proj is not None:
            parts.append(self.image_proj(image_emb))
        return self.mlp(torch.cat(parts, dim=-1))


class GatedFusionHead(nn.Module):
    """A gated multimodal unit (Arevalo et al., 2017): a learned gate z in (0, 1) per sample and unit mixes
    tanh(W_t text) and tanh(W_i image) as z * text + (1 - z) * image; then the MLP."""

    def __init__(self, cfg: HeadConfig, text_dim: int | None, image_dim: int | None):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, cfg.proj_dim)
        self.image_proj = nn.Linear(image_dim, cfg.proj_dim)
        self.gate = nn.Linear(text_dim + image_dim, cfg.proj_dim)
        self.mlp = classifier_mlp(cfg, cfg.proj_dim)

    def forward(self, text_emb: torch.Tensor, image_emb: torch.Tensor) -> torch.Tensor:
        z = torch.sigmoid(self.gate(torch.cat([text_emb, image_emb], dim=-1)))
        fused = z * torch.tanh(self.text_proj(text_emb)) + (1 - z) * torch.tanh(self.image_proj(image_emb))
        return self.mlp(fused)


class LateFusionHead(nn.Module):
    """One unimodal head per present modality (projection + MLP to logits); the logits are averaged.
    With `late_text_linear` the text head is one linear layer: over a bag of n-grams weighted by IDF,
    a linear model of TF-IDF features, which on a few thousand texts overfits less than an MLP."""

    def __init__(self, cfg: HeadConfig, text_dim: int | None, image_dim: int | None):
        super().__init__()
        self.text_head = None
        if text_dim is not None:
            self.text_head = (
                nn.Linear(text_dim, NUM_CLASSES) if cfg.late_text_linear else ConcatFusionHead(cfg, text_dim, None)
            )
        self.image_head = ConcatFusionHead(cfg, None, image_dim) if image_dim is not None else None

    def forward(self, text_emb: torch.Tensor | None = None, image_emb: torch.Tensor | None = None) -> torch.Tensor:
        logits = []
        if self.text_head is not None:
            logits.append(self.text_head(text_emb))  # a linear layer, or a head whose first argument is text_emb
        if self.image_head is not None:
            logits.append(self.image_head(image_emb=image_emb))
        return torch.stack(logits).mean(dim=0)


class CrossAttentionBlock(nn.Module):
    """Text tokens attend to image regions and image regions to text tokens (pre-norm), then an FFN each."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_text, self.norm_image = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.text_to_image = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.image_to_text = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn_text = self._ffn(dim, dropout)
        self.ffn_image = self._ffn(dim, dropout)

    @staticmethod
    def _ffn(dim: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )

    def forward(
        self, text: torch.Tensor, image: torch.Tensor, text_padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_n, image_n = self.norm_text(text), self.norm_image(image)
        # both directions read the block's input states, so neither modality sees the other twice
        text = text + self.text_to_image(text_n, image_n, image_n, need_weights=False)[0]
        image = (
            image + self.image_to_text(image_n, text_n, text_n, key_padding_mask=text_padding, need_weights=False)[0]
        )
        return text + self.ffn_text(text), image + self.ffn_image(image)


class CrossAttentionFusionHead(nn.Module):
    """A small transformer over text tokens and image regions (e.g. ResNet-50's 7x7 map as 49 tokens):
    `attn_layers` bidirectional cross-attention blocks, then the masked mean of each side into the MLP."""

    uses_tokens = True

    def __init__(self, cfg: HeadConfig, text_dim: int | None, image_dim: int | None):
        super().__init__()
        dim = cfg.proj_dim
        self.text_in = nn.Linear(text_dim, dim)
        self.image_in = nn.Linear(image_dim, dim)
        self.modality_emb = nn.Parameter(torch.zeros(2, dim))  # tells the attention which side a token is from
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(dim, cfg.attn_heads, cfg.dropout) for _ in range(cfg.attn_layers)
        )
        self.norm = nn.LayerNorm(2 * dim)
        self.mlp = classifier_mlp(cfg, 2 * dim)

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        text = self.text_in(text_tokens) + self.modality_emb[0]
        image = self.image_in(image_tokens) + self.modality_emb[1]
        text_padding = text_mask == 0
        for block in self.blocks:
            text, image = block(text, image, text_padding)
        weights = text_mask.unsqueeze(-1).to(text.dtype)
        text_pooled = (text * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.mlp(self.norm(torch.cat([text_pooled, image.mean(dim=1)], dim=-1)))


FUSIONS: dict[str, type[nn.Module]] = {
    "concat": ConcatFusionHead,
    "gated": GatedFusionHead,
    "cross_attention": CrossAttentionFusionHead,
    "late": LateFusionHead,
}
assert set(FUSIONS) == set(FUSION_MODALITIES), "register a new fusion in config.checks.FUSION_MODALITIES"


def supports(fusion: str, modality: str) -> bool:
    """Whether `model.head.fusion` works with `model.modality`."""
    return modality in FUSION_MODALITIES[fusion]


def build_head(cfg: HeadConfig, text_dim: int | None, image_dim: int | None) -> nn.Module:
    """Build the fusion head for the modalities present (None for an absent one)."""
    modality = "both" if text_dim is not None and image_dim is not None else "text" if text_dim is not None else "image"
    assert supports(cfg.fusion, modality), (cfg.fusion, modality)  # ModelConfig checked the pair
    return FUSIONS[cfg.fusion](cfg, text_dim, image_dim)
