"""The image encoder interface: a backbone giving pooled features, a feature map and region tokens.

Its own module so that the encoders built elsewhere (clip.py, timm_image.py) and image.py, which
chooses among them, all import it without importing each other.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from msa_dist.common.errors import MsaDistError


class ImageEncoder(nn.Module):
    """Backbone -> [B, out_dim] pooled features; `forward_map` gives the last feature map [B, C, h, w]
    and `forward_tokens` the same as region tokens [B, h*w, C] (C = `token_dim`)."""

    def __init__(self, backbone: nn.Module, out_dim: int, channels_last: bool = False):
        super().__init__()
        self.backbone = backbone
        self.out_dim = int(out_dim)
        self.channels_last = channels_last

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        # the weights being channels_last only pays off when the input is too
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self._prepare(images))

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last feature map before global pooling (e.g. ResNet-50: [B, 2048, 7, 7] at 224 px).

        C equals out_dim except for models whose classifier keeps hidden layers (e.g. MobileNetV3).
        """
        images, net = self._prepare(images), self.backbone
        if isinstance(net, torchvision.models.ResNet):
            x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
            return net.layer4(net.layer3(net.layer2(net.layer1(x))))
        if isinstance(net, torchvision.models.SwinTransformer):
            return net.permute(net.norm(net.features(images)))  # features are channels-last [B, h, w, C]
        if hasattr(net, "features"):
            return net.features(images)
        raise MsaDistError(
            f"model.image.name: {type(net).__name__} has no feature map for fusion=cross_attention; "
            "use a CNN (resnet50, convnext_tiny, ...), a timm: model or a clip: model"
        )

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Image regions as tokens: the last feature map flattened, [B, h*w, token_dim]."""
        return self.forward_map(images).flatten(2).transpose(1, 2)

    @property
    def token_dim(self) -> int:
        """Channels of the feature map (found by one small forward pass, then cached)."""
        if "_token_dim" not in self.__dict__:
            was_training = self.training
            with torch.no_grad():
                self.eval()  # no BatchNorm statistics update from the probe
                probe = next(self.parameters()).new_zeros(1, 3, 64, 64)
                self.__dict__["_token_dim"] = int(self.forward_map(probe).shape[1])
            self.train(was_training)
        return self.__dict__["_token_dim"]

    @token_dim.setter
    def token_dim(self, value: int) -> None:
        self.__dict__["_token_dim"] = int(value)
