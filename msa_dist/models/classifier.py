"""The full model: text and/or image encoder plus a fusion head, selected by model.modality."""

from __future__ import annotations

import torch
from torch import nn

from msa_dist.config.model_section import ModelConfig
from msa_dist.models.fusion import FUSIONS, build_head
from msa_dist.models.image import build_image_encoder
from msa_dist.models.image_base import ImageEncoder
from msa_dist.models.layers import lr_scale_groups
from msa_dist.models.text import TextEncoder, build_bow_encoder, build_text_encoder


class MultimodalSentimentClassifier(nn.Module):
    """(input_ids, attention_mask, images) -> logits [B, NUM_CLASSES]; only the encoders in use exist."""

    def __init__(
        self,
        text_encoder: TextEncoder | None,
        image_encoder: ImageEncoder | None,
        head: nn.Module,
        modality: str,
        modality_dropout: float = 0.0,
        layer_decay: tuple[float, float] = (1.0, 1.0),
        bow_encoder: TextEncoder | None = None,
    ):
        super().__init__()
        assert (text_encoder is not None) == (modality in ("both", "text"))
        assert (image_encoder is not None) == (modality in ("both", "image"))
        self.text_encoder = text_encoder
        self.bow_encoder = bow_encoder  # a third input: TF-IDF n-grams of the same tokens, joined to the text vector
        self.image_encoder = image_encoder
        self.head = head
        self.modality = modality
        self.modality_dropout = modality_dropout
        self.layer_decay = layer_decay  # (text, image) layer-wise lr decay factors

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        mix: tuple[torch.Tensor, float] | None = None,
    ) -> torch.Tensor:
        """`mix` = (permutation, lambda), training with mixup: each sample's text and image vectors
        become lambda * its own + (1 - lambda) * those of sample permutation[i] (pooled heads only)."""
        if self.text_encoder is not None:
            if input_ids is None:
                raise ValueError(f"modality={self.modality} needs input_ids")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
        if self.image_encoder is not None and images is None:
            raise ValueError(f"modality={self.modality} needs images")
        if getattr(self.head, "uses_tokens", False):
            assert mix is None, "mixup mixes pooled vectors (the config check keeps it off token heads)"
            text_tokens = self.text_encoder.forward_tokens(input_ids, attention_mask)
            image_tokens = self.image_encoder.forward_tokens(images)
            text_tokens, image_tokens = self._drop_modality(text_tokens, image_tokens)
            return self.head(text_tokens=text_tokens, text_mask=attention_mask, image_tokens=image_tokens)
        text_emb = self.text_encoder(input_ids, attention_mask) if self.text_encoder is not None else None
        if self.bow_encoder is not None:
            text_emb = torch.cat([text_emb, self.bow_encoder(input_ids, attention_mask)], dim=-1)
        image_emb = self.image_encoder(images) if self.image_encoder is not None else None
        text_emb, image_emb = self._drop_modality(text_emb, image_emb)
        if mix is not None:
            perm, lam = mix
            text_emb, image_emb = (
                None if emb is None else lam * emb + (1.0 - lam) * emb[perm] for emb in (text_emb, image_emb)
            )
        return self.head(text_emb=text_emb, image_emb=image_emb)

    def _drop_modality(
        self, text: torch.Tensor | None, image: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Training only: zero one modality (text or image, at random) of a `modality_dropout` share of samples."""
        if not self.training or self.modality_dropout <= 0 or text is None or image is None:
            return text, image
        batch = text.shape[0]
        dropped = torch.rand(batch, device=text.device) < self.modality_dropout
        drop_text = dropped & (torch.rand(batch, device=text.device) < 0.5)
        drop_image = dropped & ~drop_text
        # multiplying (not masking in place) keeps every parameter in the graph, as DDP requires
        keep_text = (~drop_text).to(text.dtype).view(batch, *[1] * (text.dim() - 1))
        keep_image = (~drop_image).to(image.dtype).view(batch, *[1] * (image.dim() - 1))
        return text * keep_text, image * keep_image

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part ("text", "image", "bow", "head"), each for its own learning rate.

        "text", "image" and "head" are always present, "bow" with the bag-of-n-grams branch (a part that is
        absent or frozen gives an empty list). With layer-wise lr decay a backbone's parameters are listed
        under `text*<multiplier>` / `image*<multiplier>` keys instead, one per depth (see
        `msa_dist.models.layers`); "head" is last.
        """
        groups: dict[str, list[nn.Parameter]] = {"text": [], "image": []}
        for part, module, decay in (
            ("text", self.text_encoder, self.layer_decay[0]),
            ("image", self.image_encoder, self.layer_decay[1]),
        ):
            if module is not None:
                groups.update(lr_scale_groups(module, part, decay))
        if self.bow_encoder is not None:
            groups["bow"] = [p for p in self.bow_encoder.parameters() if p.requires_grad]
        groups["head"] = [p for p in self.head.parameters() if p.requires_grad]  # last: the lr a backend logs
        return groups


def build_model(
    cfg: ModelConfig, vocab_size: int, pretrained: bool = True, arch_dir: str | None = None
) -> MultimodalSentimentClassifier:
    """Build the encoders `cfg.modality` needs and the fusion head (`cfg` was checked when it was made).

    `pretrained=False` builds the architectures without loading weights, for restoring a checkpoint;
    `arch_dir` is the directory written by `save_text_architecture` (then no hub access is needed).
    """
    text_encoder = image_encoder = None
    if cfg.modality in ("both", "text"):
        text_encoder = build_text_encoder(cfg.text, vocab_size, pretrained=pretrained, arch_dir=arch_dir)
    if cfg.modality in ("both", "image"):
        image_encoder = build_image_encoder(cfg.image, pretrained=pretrained)
    uses_tokens = getattr(FUSIONS[cfg.head.fusion], "uses_tokens", False)
    image_dim = None if image_encoder is None else image_encoder.token_dim if uses_tokens else image_encoder.out_dim
    bow_encoder = build_bow_encoder(cfg.bow, vocab_size) if cfg.bow.hidden else None
    text_dim = text_encoder.out_dim + (bow_encoder.out_dim if bow_encoder else 0) if text_encoder else None
    head = build_head(cfg.head, text_dim, image_dim)
    return MultimodalSentimentClassifier(
        text_encoder,
        image_encoder,
        head,
        cfg.modality,
        cfg.head.modality_dropout,
        (cfg.text.layer_decay, cfg.image.layer_decay),
        bow_encoder,
    )
