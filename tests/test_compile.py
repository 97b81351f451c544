"""backend.compile on the CPU: torch.compile (inductor) of the tiny models gives eager's outputs and
gradients within float tolerance (the GPU check of launch/device_check.sh times it; this checks it)."""
from __future__ import annotations

import copy

import torch

from dist_utils import TINY
from msa_dist.config import load_config
from msa_dist.engine.backends import build_backend
from msa_dist.engine.runtime import DistEnv
from msa_dist.models import build_model


def test_compiled_tiny_model_matches_eager():
    """Both encoders and the head, forward and backward (about 40 s of inductor compilation here)."""
    cfg = load_config(base=TINY, overrides=["backend.compile=true"])
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=200, pretrained=False)
    eager = copy.deepcopy(model)
    backend = build_backend(cfg.backend, DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")))
    backend.prepare(model, cfg.optim, total_steps=10, grad_accum_steps=1, micro_batch_size=4)
    assert backend.model is not backend.module  # the compiled wrapper
    generator = torch.Generator().manual_seed(1)
    inputs = {"input_ids": torch.randint(5, 200, (4, 12), generator=generator),
              "attention_mask": torch.ones(4, 12, dtype=torch.long),
              "images": torch.randn(4, 3, 32, 32, generator=generator)}
    inputs["attention_mask"][1, 8:] = 0
    backend.model.train(), eager.train()
    compiled_out, eager_out = backend.model(**inputs), eager(**inputs)
    assert torch.allclose(compiled_out, eager_out, atol=1e-5, rtol=1e-4)
    compiled_out.sum().backward()
    eager_out.sum().backward()
    for (name, a), b in zip(backend.module.named_parameters(), eager.parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
