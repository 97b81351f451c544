"""The text encoder: any Hugging Face `AutoModel`, pooled to one vector per text."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel

from msa_dist.common.errors import MsaDistError
from msa_dist.config.checks import POOLINGS
from msa_dist.config.model_section import BowBranchConfig, TextEncoderConfig
from msa_dist.models.bow import BagOfNgrams, BagOfNgramsConfig
from msa_dist.models.clip import load_clip_tower
from msa_dist.models.layers import unfreeze_last_layers
from msa_dist.models.lora import add_lora
from msa_dist.models.pretrained import resolve_text_dir
from msa_dist.models.tokenizer import offline_hint

CLIP_PREFIX = "clip:"  # model.text.name "clip:<hub name or dir>": the text tower of a CLIPModel checkpoint


# Encoders whose SDPA attention takes a ready [B, 1, 1, T] bool mask as it is. Given the 2D mask,
# Hugging Face checks `mask.all()` on the host to drop a mask without padding: a GPU sync per forward.
MASK_4D_MODELS = {"bert", "roberta"}


class TextEncoder(nn.Module):
    """Hugging Face backbone -> [B, out_dim]: the first token's state ("cls"), a masked mean ("mean"),
    or the last non-padding token's state ("last": CLIP's EOS token, which a causal text model needs)."""

    def __init__(self, model: nn.Module, pooling: str = "cls"):
        super().__init__()
        assert pooling in POOLINGS, pooling
        self.model = model
        self.pooling = pooling
        self.out_dim = int(model.config.hidden_size)
        config = model.config
        self.mask_4d = getattr(config, "_attn_implementation", None) == "sdpa" and config.model_type in MASK_4D_MODELS

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Every token's last hidden state, [B, T, out_dim] (padding rows included; mask them)."""
        mask = attention_mask[:, None, None, :].bool() if self.mask_4d else attention_mask
        return self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        token_states = self.forward_tokens(input_ids, attention_mask)
        if self.pooling == "cls":
            return token_states[:, 0]
        if self.pooling == "last":
            # tokenizers here pad on the right, so the last real token sits at length - 1
            last = attention_mask.sum(dim=1).clamp(min=1) - 1
            return token_states[torch.arange(len(last), device=last.device), last]
        text_mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
        # clamp: an all-padding row gives zeros instead of NaN
        return (token_states * text_mask).sum(dim=1) / text_mask.sum(dim=1).clamp(min=1.0)


def _drop_pooler(model: nn.Module) -> nn.Module:
    """Remove BERT's pooler: it is never used, and unused trainable params break DDP's reducer."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def _tiny_bert(cfg: TextEncoderConfig, vocab_size: int) -> nn.Module:
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.tiny_hidden,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        intermediate_size=4 * cfg.tiny_hidden,
        max_position_embeddings=512,
        hidden_dropout_prob=cfg.tiny_dropout,
        attention_probs_dropout_prob=cfg.tiny_dropout,
    )
    return BertModel(config, add_pooling_layer=False)


def _from_pretrained(name: str) -> nn.Module:
    if name.startswith(CLIP_PREFIX):
        return load_clip_tower("text", name.removeprefix(CLIP_PREFIX), pretrained=True)
    name = resolve_text_dir(name)  # a packaged backbone's short name -> its verified folder
    try:
        model = AutoModel.from_pretrained(name, trust_remote_code=False)  # never a folder's own code
    except (OSError, ValueError) as exc:
        if Path(name).is_dir():
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MsaDistError(
                f"could not load a text model from directory '{name}' (model.text.name): {first_line}"
            ) from None
        raise MsaDistError(offline_hint("text model", name)) from None
    # checkpoints may be stored in half precision; the backend picks the compute precision
    return model.float()


def _from_architecture(name: str, arch_dir: str | None) -> nn.Module:
    if arch_dir is None and name.startswith(CLIP_PREFIX):
        return load_clip_tower("text", name.removeprefix(CLIP_PREFIX), pretrained=False)
    source = arch_dir or resolve_text_dir(name)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError):
        if arch_dir is not None:
            raise MsaDistError(
                f"text model architecture not found in '{arch_dir}' (expected a config.json "
                "written by save_text_architecture)"
            ) from None
        raise MsaDistError(offline_hint("text model config", name)) from None
    return AutoModel.from_config(config, trust_remote_code=False).float()


def build_text_encoder(
    cfg: TextEncoderConfig, vocab_size: int, pretrained: bool = True, arch_dir: str | None = None
) -> TextEncoder:
    """Build the text encoder: "tiny" from scratch, else a hub name / local dir (weights or only the architecture).

    `vocab_size` sizes the tiny model's embeddings; pretrained models keep their own vocabulary.
    `pretrained=False` builds the architecture without weights (from `arch_dir` if given), for loading a
    checkpoint of ours without the hub. `cfg.freeze` only turns off gradients: dropout still follows
    train()/eval() like the rest of the model.
    """
    if cfg.name == "tiny" and cfg.tiny_arch == "bow":
        model = BagOfNgrams(
            BagOfNgramsConfig(
                vocab_size,
                cfg.tiny_hidden,
                cfg.tiny_bigram_buckets,
                cfg.tiny_char_buckets,
                cfg.tiny_token_dropout,
                cfg.tiny_idf,
                cfg.tiny_init_std,
            )
        )
    elif cfg.name == "tiny":
        model = _tiny_bert(cfg, vocab_size)
    elif pretrained:
        model = _from_pretrained(cfg.name)
    else:
        model = _from_architecture(cfg.name, arch_dir)
    if cfg.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise MsaDistError(f"model.text.gradient_checkpointing: {type(model).__name__} does not support it")
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x names it so
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    encoder = TextEncoder(_drop_pooler(model), cfg.pooling)
    if cfg.freeze:
        encoder.requires_grad_(False)
    unfreeze_last_layers(
        encoder.model, -1 if cfg.freeze else cfg.unfreeze_last_n_layers, "model.text.unfreeze_last_n_layers"
    )
    if cfg.lora.r:
        add_lora(encoder.model, cfg.lora, "model.text.lora")
    return encoder


def build_bow_encoder(cfg: BowBranchConfig, vocab_size: int) -> TextEncoder:
    """The bag-of-n-grams branch beside a text encoder (model.bow): from scratch, over the same tokenizer's ids
    (`vocab_size` of them), mean-pooled (with `cfg.idf`: TF-IDF's weighted sum of the n-grams' embeddings)."""
    config = BagOfNgramsConfig(
        vocab_size, cfg.hidden, cfg.bigram_buckets, cfg.char_buckets, cfg.token_dropout, cfg.idf, cfg.init_std
    )
    return TextEncoder(BagOfNgrams(config), "mean")


def save_text_architecture(text_encoder: TextEncoder, directory: str | Path) -> None:
    """Write the backbone's config.json so `build_text_encoder(pretrained=False, arch_dir=...)` needs no hub."""
    text_encoder.model.config.save_pretrained(str(directory))
