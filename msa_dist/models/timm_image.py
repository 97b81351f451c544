"""timm image backbones: `model.image.name: timm:<model name>` (needs `pip install timm`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from msa_dist.common.errors import MsaDistError
from msa_dist.models.image_base import ImageEncoder


class TimmImageEncoder(ImageEncoder):
    """A timm model built with `num_classes=0`: its forward gives pooled features, `forward_features` the map."""

    def __init__(self, model: nn.Module, channels_last: bool = False):
        super().__init__(model, getattr(model, "head_hidden_size", None) or model.num_features, channels_last)
        self.token_dim = model.num_features
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(self._prepare(images))
        if features.dim() == 4:  # CNN: [B, C, h, w]
            return features.flatten(2).transpose(1, 2)
        return features[:, self.num_prefix_tokens :]  # ViT: [B, N, C] with class/register tokens first

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(self._prepare(images))
        if features.dim() == 4:
            return features
        tokens = features[:, self.num_prefix_tokens :]
        side = int(tokens.shape[1] ** 0.5)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)


def build_timm_encoder(name: str, weights: str, channels_last: bool = False) -> TimmImageEncoder:
    """weights: imagenet (timm's default pretrained tag, downloaded), none, or a local checkpoint file."""
    try:
        import timm
    except ImportError:
        raise MsaDistError("model.image.name=timm:... needs the timm package: pip install timm") from None
    if not timm.is_model(name):
        raise MsaDistError(f"model.image.name: unknown timm model {name!r} (see timm.list_models())")
    kwargs: dict = {"num_classes": 0}
    if weights == "imagenet":
        kwargs["pretrained"] = True
    elif weights != "none":
        if not Path(weights).is_file():
            raise MsaDistError(f"model.image.weights: file not found: {weights}")
        # timm drops the checkpoint's classifier itself since num_classes=0
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    try:
        model = timm.create_model(name, **kwargs)
    except (OSError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MsaDistError(
            f"could not load the weights of timm model {name} ({detail}). Download them where there "
            f"is internet, copy the file here and set model.image.weights=/path/to/file"
        ) from None
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return TimmImageEncoder(model, channels_last)
