"""CLIP backbones: the text and the vision tower of one Hugging Face `CLIPModel` checkpoint.

`model.text.name: clip:openai/clip-vit-base-patch32` and `model.image.name: clip:openai/clip-vit-base-patch32`
(a hub name or a local directory after the prefix) load the two towers; the projections into the
joint embedding space are not used, the fusion head learns its own.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoConfig, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

from msa_dist.common.errors import MsaDistError
from msa_dist.models.image_base import ImageEncoder

TOWERS = {"text": (CLIPTextModel, CLIPTextConfig), "image": (CLIPVisionModel, CLIPVisionConfig)}
CLIP_MODEL_TYPES = ("clip", "clip_text_model", "clip_vision_model")
# The loader normalises images with ImageNet statistics; CLIP was trained with its own.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@contextlib.contextmanager
def _quiet_transformers():
    # Loading one tower from a two-tower checkpoint reports the other tower's keys as unexpected.
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


def load_clip_tower(tower: str, source: str, pretrained: bool = True) -> nn.Module:
    """CLIPTextModel / CLIPVisionModel from a CLIPModel checkpoint (weights, or only its config)."""
    model_cls, config_cls = TOWERS[tower]
    key = f"model.{tower}.name"
    try:
        model_type = AutoConfig.from_pretrained(source, trust_remote_code=False).model_type
    except (OSError, ValueError):
        where = "directory" if Path(source).is_dir() else "hub name"
        raise MsaDistError(
            f"{key}=clip:{source}: could not read a CLIP checkpoint from {where} '{source}' (no network access or "
            f"not in the Hugging Face cache?). Download it where there is internet (`huggingface-cli download "
            f"{source} --local-dir DIR`), copy DIR here and set {key}=clip:DIR"
        ) from None
    if model_type not in CLIP_MODEL_TYPES:
        raise MsaDistError(f"{key}=clip:{source}: that checkpoint is a '{model_type}' model, not CLIP")
    with _quiet_transformers():
        if pretrained:
            return model_cls.from_pretrained(source).float()
        return model_cls(config_cls.from_pretrained(source)).float()


class ClipImageEncoder(ImageEncoder):
    """CLIP's vision transformer -> [B, hidden] (the post-norm class token); patches are the tokens."""

    def __init__(self, vision_model: nn.Module):
        super().__init__(vision_model, vision_model.config.hidden_size)
        self.image_size = int(vision_model.config.image_size)
        self.token_dim = self.out_dim
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        clip_mean, clip_std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
        # x_clip = (x * std + mean - clip_mean) / clip_std, per channel
        self.register_buffer("input_scale", (std / clip_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((mean - clip_mean) / clip_std).view(1, 3, 1, 1), persistent=False)

    def _hidden_states(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images * self.input_scale + self.input_shift
        # position embeddings are interpolated when the crop is not the checkpoint's size
        out = self.backbone(pixel_values=pixels, interpolate_pos_encoding=images.shape[-1] != self.image_size)
        return out.last_hidden_state

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.post_layernorm(self._hidden_states(images)[:, 0])

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, R, hidden] after the final norm (the class token left out)."""
        return self.backbone.post_layernorm(self._hidden_states(images))[:, 1:]

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(images)
        side = math.isqrt(tokens.shape[1])
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
