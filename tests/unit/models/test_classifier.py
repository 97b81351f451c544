"""Mixup of pooled vectors (train.mixup_alpha) in the classifier (models/classifier.py), and the fusion
heads it refuses. The EMA of the weights: tests/unit/engine/test_ema.py."""

from __future__ import annotations

import pytest
import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.config.checks import FUSIONS_ON_TOKENS
from msa_dist.config.schema import load_config
from msa_dist.models.fusion import FUSIONS


def test_mixup_mixes_each_modality_vector_with_the_permuted_samples():
    from msa_dist.config.model_section import ModelConfig
    from msa_dist.models import build_model

    cfg = ModelConfig(modality="both")
    cfg.text.name, cfg.text.tiny_hidden, cfg.text.tiny_layers, cfg.text.tiny_heads = "tiny", 8, 1, 1
    cfg.image.name, cfg.image.weights, cfg.image.tiny_width = "tiny", "none", 4
    model = build_model(cfg, vocab_size=20).eval()
    ids, mask, images = torch.randint(5, 20, (3, 6)), torch.ones(3, 6, dtype=torch.long), torch.randn(3, 3, 32, 32)
    perm, lam = torch.tensor([2, 0, 1]), 0.7
    seen = {}
    model.head.register_forward_pre_hook(lambda _, args, kwargs: seen.update(kwargs), with_kwargs=True)
    model(ids, mask, images)
    plain = dict(seen)
    model(ids, mask, images, mix=(perm, lam))
    for name in ("text_emb", "image_emb"):
        assert torch.allclose(seen[name], lam * plain[name] + (1 - lam) * plain[name][perm], atol=1e-6)


def test_token_heads_are_the_ones_mixup_refuses():
    assert set(FUSIONS_ON_TOKENS) == {name for name, head in FUSIONS.items() if getattr(head, "uses_tokens", False)}
    with pytest.raises(MsaDistError, match="mixes pooled vectors"):
        load_config(overrides=["train.mixup_alpha=0.2", "model.head.fusion=cross_attention"])
