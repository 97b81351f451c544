"""The backends (engine/backends): backend.compile on the CPU, where torch.compile (inductor) of the tiny
models gives eager's outputs and gradients within float tolerance (the GPU check of launch/device_check.sh
times it; this checks it), whole (compile_scope=model) or encoder by encoder (compile_scope=encoders);
backend.timeout_s is the process group's timeout."""

from __future__ import annotations

import copy
import datetime

import pytest
import torch
from dist_utils import TINY

from msa_dist.config.schema import load_config
from msa_dist.engine.backends import build_backend
from msa_dist.engine.runtime import DistEnv
from msa_dist.models import build_model


@pytest.mark.slow
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
    inputs = {
        "input_ids": torch.randint(5, 200, (4, 12), generator=generator),
        "attention_mask": torch.ones(4, 12, dtype=torch.long),
        "images": torch.randn(4, 3, 32, 32, generator=generator),
    }
    inputs["attention_mask"][1, 8:] = 0
    backend.model.train(), eager.train()
    compiled_out, eager_out = backend.model(**inputs), eager(**inputs)
    assert torch.allclose(compiled_out, eager_out, atol=1e-5, rtol=1e-4)
    compiled_out.sum().backward()
    eager_out.sum().backward()
    for (name, a), b in zip(backend.module.named_parameters(), eager.parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.slow
def test_compile_scope_encoders_trains_one_step_as_eager():
    """backend.compile_scope=encoders: both encoders compiled in place (parameter names kept), the head
    eager; one training step gives eager's loss and gradients within float tolerance."""
    cfg = load_config(base=TINY, overrides=["backend.compile=true", "backend.compile_scope=encoders"])
    eager_cfg = load_config(base=TINY)
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=200, pretrained=False)
    names = list(model.state_dict())
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    compiled, eager = build_backend(cfg.backend, env), build_backend(eager_cfg.backend, env)
    compiled.prepare(model, cfg.optim, total_steps=10, grad_accum_steps=1, micro_batch_size=4)
    eager.prepare(copy.deepcopy(model), cfg.optim, total_steps=10, grad_accum_steps=1, micro_batch_size=4)
    assert compiled.model is compiled.module and list(compiled.module.state_dict()) == names
    assert compiled.module.text_encoder._compiled_call_impl is not None
    assert compiled.module.image_encoder._compiled_call_impl is not None
    assert compiled.module.head._compiled_call_impl is None and eager.module.text_encoder._compiled_call_impl is None
    generator = torch.Generator().manual_seed(1)
    inputs = {
        "input_ids": torch.randint(5, 200, (4, 12), generator=generator),
        "attention_mask": torch.ones(4, 12, dtype=torch.long),
        "images": torch.randn(4, 3, 32, 32, generator=generator),
    }
    inputs["attention_mask"][1, 8:] = 0
    labels = torch.tensor([0, 1, 2, 1])
    losses = []
    for backend in (compiled, eager):
        backend.model.train()
        loss = torch.nn.functional.cross_entropy(backend.model(**inputs), labels)
        backend.backward(loss)
        losses.append(loss.item())
    assert torch.isfinite(torch.tensor(losses)).all()
    assert abs(losses[0] - losses[1]) <= 1e-5 * max(1.0, abs(losses[1]))
    for (name, a), b in zip(compiled.module.named_parameters(), eager.module.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    before = [p.detach().clone() for p in compiled.module.parameters()]
    compiled.step(True)  # AdamW's first step is about lr * sign(grad): weights are compared through the grads
    after = list(compiled.module.parameters())
    assert all(torch.isfinite(p).all() for p in after) and any(not torch.equal(a, b) for a, b in zip(after, before))


def test_compile_levers_are_checked_and_default_is_unchanged():
    cfg = load_config(base=TINY)
    assert (cfg.backend.compile, cfg.backend.compile_scope, cfg.backend.compile_mode) == (False, "model", "default")
    model = build_model(cfg.model, vocab_size=200, pretrained=False)
    backend = build_backend(cfg.backend, DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")))
    backend.prepare(model, cfg.optim, total_steps=10, grad_accum_steps=1, micro_batch_size=4)
    assert backend.model is model and model.text_encoder._compiled_call_impl is None
    with pytest.warns(UserWarning, match="no effect without backend.compile=true"):
        lever = load_config(base=TINY, overrides=["backend.compile_mode=max-autotune"])
        build_backend(lever.backend, backend.env).prepare(
            build_model(cfg.model, vocab_size=200, pretrained=False), cfg.optim, 10, 1, 4
        )


def test_backend_timeout_s_is_the_process_group_timeout(monkeypatch):
    """backend.timeout_s (not a hard-coded 30 min) is how long a collective waits for a hung peer."""
    from msa_dist.config.schema import load_config
    from msa_dist.engine.backends import base, build_backend
    from msa_dist.engine.runtime import read_env

    seen = {}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(base.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(base, "rendezvous", lambda url, timeout: iter([(seen.setdefault("rdzv", timeout), 0, 1)]))
    monkeypatch.setattr(base.dist, "PrefixStore", lambda prefix, store: store)
    monkeypatch.setattr(base.dist, "init_process_group", lambda name, **kw: seen.update(kw))
    cfg = load_config(overrides=["backend.name=ddp", "backend.device=cpu", "backend.timeout_s=90"])
    build_backend(cfg.backend, read_env("cpu"), join=False).init_process_group()
    assert seen["timeout"] == seen["rdzv"] == datetime.timedelta(seconds=90)
