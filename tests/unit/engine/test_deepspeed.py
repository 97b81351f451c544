"""The DeepSpeed backend's config (engine/backends/deepspeed.py), generated from ours and merged with the
user's; fp16 on a CPU refused in one line. Training under DeepSpeed: tests/integration/test_distributed.py."""

from __future__ import annotations

import json

import pytest

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import load_config
from msa_dist.engine import trainer
from msa_dist.engine.backends.deepspeed import deepspeed_config


def test_deepspeed_config_is_generated_from_ours_and_merged(tmp_path):
    cfg = load_config(
        base={"backend": {"name": "deepspeed", "zero_stage": 3, "precision": "bf16"}, "optim": {"grad_clip": 0.5}}
    )
    ds = deepspeed_config(cfg.backend, cfg.optim, micro_batch_size=4, grad_accum_steps=2, world_size=8, on_gpu=False)
    assert (ds["train_batch_size"], ds["gradient_clipping"], ds["zero_optimization"]["stage"]) == (64, 0.5, 3)
    assert ds["torch_autocast"]["enabled"] and not ds["fp16"]["enabled"] and ds["optimizer"]["type"] == "AdamW"
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"overlap_comm": True}}))
    cfg.backend.deepspeed_config = str(user)
    merged = deepspeed_config(cfg.backend, cfg.optim, 4, 2, 8, on_gpu=False)
    assert merged["zero_optimization"] == {"stage": 3, "overlap_comm": True}
    user.write_text(json.dumps({"train_micro_batch_size_per_gpu": 16}))
    with pytest.raises(MsaDistError, match="set train.batch_size"):
        deepspeed_config(cfg.backend, cfg.optim, 4, 2, 8, on_gpu=False)


def test_deepspeed_fp16_on_a_cpu_says_so_in_one_line(tmp_path):
    cfg = load_config(base={"backend": {"name": "deepspeed", "precision": "fp16", "device": "cpu"}})
    with pytest.raises(MsaDistError, match="fp16 with DeepSpeed needs a GPU"):
        trainer.train(cfg, tmp_path / "run")
