"""The FSDP2 backend (engine/backends/fsdp.py) in one process on a gloo group of one rank: its
config rules, its checkpoint format, and a dropped micro batch leaving the gradient shards as they
were. Its training, resume and resharding on 2 ranks: tests/integration/test_fsdp.py."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from dist_utils import TINY, free_port

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import load_config
from msa_dist.engine.backends import build_backend, format_folder, saved_format
from msa_dist.engine.runtime import DistEnv
from msa_dist.models import build_model

CPU = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def test_fsdp_config_rules_and_launcher(monkeypatch):
    with pytest.raises(MsaDistError, match=r"^backend.precision=fp16: .*backend.name=fsdp.*bf16"):
        load_config(base=TINY, overrides=["backend.name=fsdp", "backend.precision=fp16"])
    monkeypatch.delenv("RANK", raising=False)
    cfg = load_config(base=TINY, overrides=["backend.name=fsdp"])
    with pytest.raises(MsaDistError, match="needs a launcher: run it under torchrun"):
        build_backend(cfg.backend, CPU)
    with pytest.warns(UserWarning, match="fsdp_reshard_after_forward has no effect with backend.name=ddp"):
        build_backend(
            load_config(overrides=["backend.name=ddp", "backend.fsdp_reshard_after_forward=false"]).backend,
            CPU,
            join=False,
        )


def test_an_fsdp_step_directory_is_recognised_by_its_dcp_folder(tmp_path):
    assert (saved_format(tmp_path), format_folder(tmp_path)) == ("torch", None)
    (tmp_path / "fsdp").mkdir()
    assert (saved_format(tmp_path), format_folder(tmp_path)) == ("fsdp", "fsdp")


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _grads(cfg, batches, drops) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    backend = build_backend(cfg.backend, CPU, join=False)
    backend.prepare(build_model(cfg.model, vocab_size=200, pretrained=False), cfg.optim, 10, 2, 4)
    for (ids, mask, images), drop in zip(batches, drops):
        loss = backend.model(input_ids=ids, attention_mask=mask, images=images).float().sum()
        backend.backward(loss * (float("nan") if drop else 1.0), drop=torch.tensor(drop))
    return {name: p.grad.full_tensor().clone() for name, p in backend.module.named_parameters() if p.grad is not None}


def test_a_dropped_micro_batch_leaves_the_gradient_shards_as_they_were(one_rank_group):
    """With accumulation, hooks on sharded parameters never fire: the backend puts back each shard
    as it was before a micro batch every rank voted to drop (a NaN loss here)."""
    cfg = load_config(base=TINY, overrides=["backend.name=fsdp", "train.grad_accum_steps=2"])
    torch.manual_seed(1)
    batches = [
        (torch.randint(5, 200, (4, 8)), torch.ones(4, 8, dtype=torch.long), torch.randn(4, 3, 32, 32)) for _ in range(2)
    ]
    first_only = _grads(cfg, batches[:1], [False])
    dropped = _grads(cfg, batches, [False, True])
    assert first_only.keys() == dropped.keys() and len(dropped) > 10
    assert all(torch.equal(first_only[k], dropped[k]) for k in dropped)
    first_dropped = _grads(cfg, batches, [True, False])  # no gradient yet when the first is dropped
    second_only = _grads(cfg, batches[1:], [False])
    assert all(torch.equal(second_only[k], first_dropped[k]) for k in first_dropped)


def test_channels_last_goes_back_to_the_default_layout_with_a_warning(one_rank_group):
    """FSDP shards only contiguous parameters (a channels_last conv weight raises in fully_shard)."""
    cfg = load_config(base=TINY, overrides=["backend.name=fsdp", "model.image.channels_last=true"])
    backend = build_backend(cfg.backend, CPU, join=False)
    with pytest.warns(UserWarning, match="channels_last has no effect with backend.name=fsdp"):
        backend.prepare(build_model(cfg.model, vocab_size=200, pretrained=False), cfg.optim, 10, 1, 4)
    assert all(p.to_local().is_contiguous() for p in backend.module.parameters())
