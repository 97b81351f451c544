"""Horizontal-flip test-time augmentation in the evaluation loop (data.eval_hflip)."""

from __future__ import annotations

import torch

from msa_dist.config.model_section import ModelConfig
from msa_dist.engine.evaluation import _forward
from msa_dist.models import build_model


def tiny_model(modality: str):
    cfg = ModelConfig(modality=modality)
    cfg.text.name, cfg.text.tiny_hidden, cfg.text.tiny_layers, cfg.text.tiny_heads = "tiny", 8, 1, 1
    cfg.image.name, cfg.image.weights, cfg.image.tiny_width = "tiny", "none", 4
    return build_model(cfg, vocab_size=20).eval()


def test_hflip_averages_the_logits_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = tiny_model("both")
    inputs = {
        "input_ids": torch.randint(5, 20, (3, 6)),
        "attention_mask": torch.ones(3, 6, dtype=torch.long),
        "images": torch.randn(3, 3, 32, 32),
    }
    with torch.no_grad():
        plain, mirrored = model(**inputs), model(**{**inputs, "images": inputs["images"].flip(-1)})
        assert not torch.allclose(plain, mirrored)
        assert torch.equal(_forward(model, inputs, hflip=False), plain)
        assert torch.allclose(_forward(model, inputs, hflip=True), (plain + mirrored) / 2, atol=1e-6)


def test_hflip_leaves_a_text_only_model_alone():
    model = tiny_model("text")
    inputs = {"input_ids": torch.randint(5, 20, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    with torch.no_grad():
        assert torch.equal(_forward(model, inputs, hflip=True), model(**inputs))
