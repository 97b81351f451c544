"""`msa-dist bench train --plain-loop`: the plain loop makes the same update as the trainer's step,
the blocks alternate, the overhead is computed from the blocks, and the profile diff is written.
No test asserts a timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from run_utils import BENCH_TINY as TINY

from msa_dist.bench.overhead import PlainLoop, build_pair, summarise_rounds
from msa_dist.bench.train import train_batches
from msa_dist.cli import main
from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import load_config
from msa_dist.engine.step import TrainStep

ROOT = Path(__file__).resolve().parents[3]


def test_plain_loop_makes_the_trainers_update(shard_dir):
    cfg = load_config(None, [*TINY, f"data.shards={shard_dir}"])
    env, trainer_backend, loss_fn, tokenizer = build_pair(cfg, 10)
    _, plain_backend, _, _ = build_pair(cfg, 10)
    batches = train_batches(cfg, env, tokenizer)
    first, second = next(batches), next(batches)
    train_step, plain = (
        TrainStep(trainer_backend, loss_fn, cfg.model.modality),
        PlainLoop(plain_backend, loss_fn, cfg.model.modality, cfg.optim.grad_clip),
    )
    for batch in (first, second):  # two steps: the optimizer's moments and the schedule count too
        torch.manual_seed(1)
        result = train_step(batch, is_boundary=True)
        torch.manual_seed(1)
        loss = plain.step(batch)
        assert result.read()["loss_sum"] == pytest.approx(float(loss), rel=1e-6)
    for (name, a), (_, b) in zip(trainer_backend.module.named_parameters(), plain_backend.module.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert trainer_backend.lr() == plain_backend.lr()


def test_bench_train_plain_loop_alternates_blocks(shard_dir, tmp_path, capsys):
    out, prof = tmp_path / "overhead.json", tmp_path / "ops.txt"
    args = ["--steps", "2", "--rounds", "3", "--warmup", "1", "--profile", str(prof), "--json", str(out)]
    config = str(ROOT / "configs" / "cpu_small.yaml")
    assert main(["bench", "train", "--plain-loop", "--config", config, *args, *TINY, f"data.shards={shard_dir}"]) == 0
    assert "overhead" in capsys.readouterr().out
    result = json.loads(out.read_text())
    rounds = result["round_records"]
    assert [r["order"] for r in rounds] == ["tp", "pt", "tp"]
    assert all(r["ratio"] == pytest.approx(r["trainer_s"] / r["plain_s"], rel=1e-4) for r in rounds)
    total = sum(r["trainer_s"] for r in rounds) / sum(r["plain_s"] for r in rounds)
    assert result["overhead"] == pytest.approx(total - 1, rel=1e-4, abs=1e-5)
    assert result["samples_per_step"] == 4 and len(result["load_avg_before"]) == 3
    assert "aten::" in prof.read_text() and result["profile_extra_ops"]


def test_summarise_rounds():
    records = [
        {
            "order": "tp",
            "trainer": {"total_s": 1.1, "step_s": [0.5, 0.6]},
            "plain": {"total_s": 1.0, "step_s": [0.5, 0.5]},
        },
        {
            "order": "pt",
            "trainer": {"total_s": 2.0, "step_s": [1.0, 1.0]},
            "plain": {"total_s": 2.0, "step_s": [1.0, 1.0]},
        },
    ]
    out = summarise_rounds(records, steps=2)
    assert out["overhead"] == pytest.approx(3.1 / 3.0 - 1)
    assert out["overhead_min_round"] == pytest.approx(0.0) and out["overhead_max_round"] == pytest.approx(0.1)
    assert out["trainer_step_s_mean"] == pytest.approx(3.1 / 4)


def test_plain_loop_refuses_accumulation(shard_dir):
    cfg = load_config(None, [*TINY, f"data.shards={shard_dir}", "train.grad_accum_steps=2"])
    from msa_dist.bench.overhead import run_overhead_bench

    with pytest.raises(MsaDistError, match="grad_accum_steps=1"):
        run_overhead_bench(cfg, steps=1, rounds=1)
