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


def bow_branch_cfg(**bow):
    from msa_dist.config.model_section import ModelConfig

    cfg = ModelConfig(modality="both")
    cfg.text.name, cfg.text.tiny_hidden, cfg.text.tiny_layers, cfg.text.tiny_heads = "tiny", 8, 1, 1
    cfg.image.name, cfg.image.weights, cfg.image.tiny_width = "tiny", "none", 4
    cfg.bow.hidden, cfg.bow.bigram_buckets, cfg.bow.char_buckets = 6, 16, 16
    for key, value in bow.items():
        setattr(cfg.bow, key, value)
    return cfg


def test_the_bow_branch_joins_the_text_vector_and_trains_at_its_own_lr():
    from msa_dist.config.schema import OptimConfig
    from msa_dist.engine.optim import optimizer_param_groups
    from msa_dist.models import build_model

    model = build_model(bow_branch_cfg(), vocab_size=20).eval()
    ids, mask, images = torch.randint(5, 20, (3, 6)), torch.ones(3, 6, dtype=torch.long), torch.randn(3, 3, 32, 32)
    seen = {}
    model.head.register_forward_pre_hook(lambda _, args, kwargs: seen.update(kwargs), with_kwargs=True)
    model(ids, mask, images)
    text_vector = model.text_encoder(ids, mask)
    assert seen["text_emb"].shape == (3, 8 + 6)
    assert torch.equal(seen["text_emb"][:, :8], text_vector)
    assert torch.allclose(seen["text_emb"][:, 8:], model.bow_encoder(ids, mask))
    groups = model.parameter_groups()
    assert {id(p) for p in groups["bow"]} == {id(p) for p in model.bow_encoder.parameters()}
    assert list(groups)[-1] == "head"
    lrs = {g["name"]: g["lr"] for g in optimizer_param_groups(OptimConfig(bow_lr=0.02), groups)}
    assert lrs["bow"] == 0.02


def test_without_the_bow_branch_the_model_is_unchanged():
    from msa_dist.models import build_model

    model = build_model(bow_branch_cfg(hidden=0), vocab_size=20)
    assert model.bow_encoder is None and "bow" not in model.parameter_groups()


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["model.modality=image"], "needs model.modality=both or text"),
        (["model.head.fusion=cross_attention"], "not with model.head.fusion=cross_attention"),
    ],
)
def test_the_bow_branch_refuses_what_it_cannot_join(overrides, says):
    with pytest.raises(MsaDistError, match=says):
        load_config(overrides=["model.bow.hidden=16", *overrides])
