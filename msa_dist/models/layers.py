"""Backbone depth: which block each parameter belongs to, for partial unfreezing and layer-wise lr decay.

Depth 0 is everything before the first block (embeddings, a CNN stem), 1..N the blocks in order
(BERT's `encoder.layer.i`, CLIP's `encoder.layers.i`, ResNet's `layer1..4`, timm's `blocks.i` /
`stages.i`, torchvision's `features.i`), N+1 everything after the last block (a final norm).
"""

from __future__ import annotations

import re

from torch import nn

from msa_dist.common.errors import MsaDistError

# The first `<container>.<index>.` (or ResNet's `layer<index>.`, torchvision ViT's `encoder_layer_<index>.`).
_BLOCK = re.compile(r"(?:^|\.)(?:(?:layer|layers|blocks|stages|features|h)\.?|encoder_layer_)(\d+)(?:\.|$)")


def parameter_depths(module: nn.Module) -> tuple[dict[str, int], int]:
    """(parameter name -> depth, number of blocks N) for a backbone; N = 0 when no blocks are found."""
    names = [name for name, _ in module.named_parameters()]
    block_of = {}
    for name in names:
        match = _BLOCK.search(name)
        if match:
            block_of[name] = int(match.group(1))
    rank = {index: i + 1 for i, index in enumerate(sorted(set(block_of.values())))}
    num_blocks = len(rank)
    depths, seen_block = {}, False
    for name in names:
        if name in block_of:
            depths[name] = rank[block_of[name]]
            seen_block = True
        else:
            # registration order: a stem comes before the blocks, a final norm after them
            depths[name] = num_blocks + 1 if seen_block else 0
    return depths, num_blocks


def block_modules(module: nn.Module) -> list[nn.Module]:
    """The blocks of a backbone as modules (those `parameter_depths` numbers 1..N), outermost only (a
    timm stage, not also its blocks): the units a sharded backend gathers one at a time."""
    blocks, taken = [], []
    for name, child in module.named_modules():
        if any(name.startswith(prefix) for prefix in taken):
            continue
        match = _BLOCK.search(name)
        if match and match.end() == len(name) and any(True for _ in child.parameters()):
            blocks.append(child)
            taken.append(f"{name}.")
    return blocks


def unfreeze_last_layers(module: nn.Module, n: int, key: str) -> None:
    """Keep gradients only for the top `n` blocks and what follows them; n < 0 leaves everything trainable."""
    if n < 0:
        return
    depths, num_blocks = parameter_depths(module)
    if num_blocks == 0:
        raise MsaDistError(
            f"config key '{key}': no transformer layers or stages found in {type(module).__name__} "
            "to unfreeze; use -1 (train all) or freeze=true"
        )
    for name, param in module.named_parameters():
        if depths[name] <= num_blocks - n:
            param.requires_grad_(False)


def lr_scale_groups(module: nn.Module, part: str, decay: float) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters keyed `part` (decay 1) or `part*<lr multiplier>` (decay^(top depth - depth))."""
    params = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if decay == 1:
        return {part: [p for _, p in params]} if params else {}
    depths, num_blocks = parameter_depths(module)
    groups: dict[str, list[nn.Parameter]] = {}
    for name, param in params:
        scale = decay ** (num_blocks + 1 - depths[name])
        groups.setdefault(f"{part}*{scale:.6g}", []).append(param)
    return groups


def split_group_key(key: str) -> tuple[str, float]:
    """'text*0.5' -> ('text', 0.5); 'head' -> ('head', 1.0)."""
    part, _, scale = key.partition("*")
    return part, float(scale) if scale else 1.0
