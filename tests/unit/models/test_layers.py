"""Backbone blocks (models/layers.py): the units a sharded backend (FSDP) wraps one by one."""

from __future__ import annotations

import timm
import torchvision
from dist_utils import TINY

from msa_dist.config.schema import load_config
from msa_dist.models import build_model
from msa_dist.models.layers import block_modules, parameter_depths


def _names(root, modules) -> list[str]:
    by_id = {id(module): name for name, module in root.named_modules()}
    return [by_id[id(module)] for module in modules]


def test_blocks_are_the_outermost_numbered_containers_with_parameters():
    model = build_model(load_config(base=TINY).model, vocab_size=200, pretrained=False)
    assert _names(model.text_encoder, block_modules(model.text_encoder)) == ["model.encoder.layer.0"]
    assert _names(model.image_encoder, block_modules(model.image_encoder)) == [
        f"backbone.features.{i}" for i in range(4)
    ]
    resnet = torchvision.models.resnet18()
    assert _names(resnet, block_modules(resnet)) == ["layer1", "layer2", "layer3", "layer4"]
    convnext = timm.create_model("convnext_atto", pretrained=False)  # stages hold blocks: the stages only
    assert _names(convnext, block_modules(convnext)) == [f"stages.{i}" for i in range(4)]
    # the same blocks that parameter_depths counts
    for backbone in (resnet, convnext):
        assert len(block_modules(backbone)) == parameter_depths(backbone)[1]
