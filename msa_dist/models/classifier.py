"""The full model: text and/or image encoder plus a fusion head, selected by model.modality."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from msa_dist.config import ModelConfig
from msa_dist.errors import MsaDistError
from msa_dist.models.fusion import build_head
from msa_dist.models.image import ImageEncoder, build_image_encoder
from msa_dist.models.text import TextEncoder, build_text_encoder

MODALITIES = ("both", "text", "image")


class MultimodalSentimentClassifier(nn.Module):
    """(input_ids, attention_mask, images) -> logits [B, NUM_CLASSES]; only the encoders in use exist."""

    def __init__(self, text_encoder: Optional[TextEncoder], image_encoder: Optional[ImageEncoder],
                 head: nn.Module, modality: str):
        super().__init__()
        assert (text_encoder is not None) == (modality in ("both", "text"))
        assert (image_encoder is not None) == (modality in ("both", "image"))
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.head = head
        self.modality = modality

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                images: Optional[torch.Tensor] = None) -> torch.Tensor:
        text_emb = image_emb = None
        if self.text_encoder is not None:
            if input_ids is None:
                raise ValueError(f"modality={self.modality} needs input_ids")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text_emb = self.text_encoder(input_ids, attention_mask)
        if self.image_encoder is not None:
            if images is None:
                raise ValueError(f"modality={self.modality} needs images")
            image_emb = self.image_encoder(images)
        return self.head(text_emb, image_emb)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part ("text", "image", "head"), each for its own learning rate.

        All three keys are always present; a part that is absent or frozen gives an empty list.
        """
        def trainable(module: Optional[nn.Module]) -> list[nn.Parameter]:
            return [] if module is None else [p for p in module.parameters() if p.requires_grad]
        return {"text": trainable(self.text_encoder), "image": trainable(self.image_encoder),
                "head": trainable(self.head)}


def build_model(cfg: ModelConfig, vocab_size: int, pretrained: bool = True,
                arch_dir: Optional[str] = None) -> MultimodalSentimentClassifier:
    """Build the encoders `cfg.modality` needs and the fusion head.

    `pretrained=False` builds the architectures without loading weights, for restoring a checkpoint;
    `arch_dir` is the directory written by `save_text_architecture` (then no hub access is needed).
    """
    if cfg.modality not in MODALITIES:
        raise MsaDistError(f"config key 'model.modality' must be one of {', '.join(MODALITIES)}; "
                           f"got {cfg.modality!r}")
    text_encoder = image_encoder = None
    if cfg.modality in ("both", "text"):
        text_encoder = build_text_encoder(cfg.text, vocab_size, pretrained=pretrained, arch_dir=arch_dir)
    if cfg.modality in ("both", "image"):
        image_encoder = build_image_encoder(cfg.image, pretrained=pretrained)
    head = build_head(cfg.head, text_encoder.out_dim if text_encoder else None,
                      image_encoder.out_dim if image_encoder else None)
    return MultimodalSentimentClassifier(text_encoder, image_encoder, head, cfg.modality)
