"""LoRA adapters on a backbone (`model.text.lora`, `model.image.lora`), with Hugging Face's `peft`.

`add_lora` puts peft's LoRA layers into a backbone in place (`peft.inject_adapter_in_model`: no
`PeftModel` wrapper, so the encoder's code and the checkpoint's top-level names stay the same) and
leaves only the adapters trainable. `merge_lora` folds every adapter into its base layer and puts the
plain layer back, so an exported model is the same architecture as one trained without LoRA and
loads without peft. peft is imported only when an adapter is asked for (`pip install 'msa-dist[lora]'`).
"""

from __future__ import annotations

from torch import nn

from msa_dist.common.errors import MsaDistError
from msa_dist.config.model_section import LoraAdapterConfig

# The layers that get adapters when `targets` is empty, by architecture: the attention's query and value
# projections (the LoRA paper's choice) for transformers; for EfficientNet's CNN the 1x1 convolutions
# (expansion, projection, head) — peft's conv adapter copies the base conv's kernel, stride and padding,
# which a 1x1 conv maps exactly; the depthwise 3x3 convs and the stem are left out.
DEFAULT_TARGETS = {
    "bert": ["query", "value"],  # BERT, MiniLM
    "roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "clip_text_model": ["q_proj", "v_proj"],
    "clip_vision_model": ["q_proj", "v_proj"],
    "EfficientNet": ["conv_pw", "conv_pwl", "conv_head"],  # timm's EfficientNet(-Lite)
    "MobileNetV3": ["conv_pw", "conv_pwl"],  # timm's
    "VisionTransformer": ["qkv"],  # timm ViTs
}


def architecture(backbone: nn.Module) -> str:
    """A Hugging Face model's `model_type`, else the class name (timm, torchvision)."""
    config = getattr(backbone, "config", None)
    return getattr(config, "model_type", None) or type(backbone).__name__


def lora_targets(backbone: nn.Module, cfg: LoraAdapterConfig, key: str) -> list[str]:
    """The configured targets, else the architecture's defaults; one line when there are none."""
    if cfg.targets:
        return list(cfg.targets)
    kind = architecture(backbone)
    if kind not in DEFAULT_TARGETS:
        raise MsaDistError(
            f"{key}.targets: no default LoRA targets for {kind}; name its linear or 1x1 conv layers "
            f"(e.g. {key}.targets=[q_proj,v_proj])"
        )
    return DEFAULT_TARGETS[kind]


def add_lora(backbone: nn.Module, cfg: LoraAdapterConfig, key: str) -> nn.Module:
    """Inject LoRA adapters into `backbone` in place (cfg.r > 0); only the adapters stay trainable."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise MsaDistError(f"{key}.r={cfg.r} needs peft: pip install 'msa-dist[lora]'") from None
    targets = lora_targets(backbone, cfg, key)
    names = [name for name, _ in backbone.named_modules()]
    unmatched = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if unmatched:  # peft itself fails only when no target at all matches
        raise MsaDistError(
            f"{key}.targets={','.join(targets)}: no module named {unmatched[0]!r} in {architecture(backbone)} "
            f"(its last module names include {', '.join(sorted({n.rsplit('.', 1)[-1] for n in names if n})[:12])})"
        )
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none")
    try:
        inject_adapter_in_model(config, backbone)
    except ValueError as exc:  # peft: no module matches, or a layer type it cannot adapt
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MsaDistError(f"{key}.targets={','.join(targets)}: {first}") from None
    # peft leaves the adapters trainable and the rest frozen; say it here too, so it holds for any peft version
    for name, param in backbone.named_parameters():
        param.requires_grad_("lora_" in name)
    return backbone


def has_lora(model: nn.Module) -> bool:
    """Whether any module of `model` is a peft adapter layer."""
    return any(_is_adapter(module) for module in model.modules())


def _is_adapter(module: nn.Module) -> bool:
    # peft's layers all derive from BaseTunerLayer; checked by name so that a model without LoRA needs no peft
    return any(cls.__name__ == "BaseTunerLayer" for cls in type(module).__mro__)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each adapter into its base layer (W + B A * alpha / r) and put the plain layer back, in place."""
    adapters = [(name, module) for name, module in model.named_modules() if _is_adapter(module)]
    for name, module in adapters:
        module.merge(safe_merge=True)  # safe_merge: a non-finite merged weight raises instead of being kept
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model
