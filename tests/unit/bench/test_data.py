"""`bench data` and `bench replicate` (CPU, tiny shards), the FLOP counts and the seed-style reference; the
decode/crop path, the lean tar reader and the collate they time: tests/unit/data/test_images.py,
test_tario.py, test_batching.py; `bench train`: tests/unit/bench/test_train.py.

No test asserts a timing: speed is measured by `msa-dist bench`, not by tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from run_utils import BENCH_TINY as TINY

from msa_dist.bench.data import run_data_bench
from msa_dist.bench.flops import FlopModel, image_forward_flops
from msa_dist.bench.replicate import replicate_shards
from msa_dist.bench.seed_loader import seed_style_samples_per_s
from msa_dist.cli import main
from msa_dist.config.schema import load_config
from msa_dist.data.verify import verify_shards

ROOT = Path(__file__).resolve().parents[3]


def test_image_flops_counts_resnet50():
    import torchvision

    assert image_forward_flops(torchvision.models.resnet50(), 224) == pytest.approx(8.18e9, rel=0.01)


def test_flop_model_counts_real_tokens_not_padding():
    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_encoder = torch.nn.Sequential(torch.nn.Embedding(50, 4), torch.nn.Linear(4, 4))
            self.head = torch.nn.Linear(4, 3)
            self.image_encoder = None

    model = FlopModel(Fake(), 32)
    assert model.text_params == 20 and model.head_params == 15
    assert model.batch_flops(samples=2, real_tokens=10) == 6 * 20 * 10 + 2 * 6 * 15


def test_bench_data_cli_prints_rate_last(shard_dir, raw_dataset, capsys, tmp_path):
    out = tmp_path / "data.json"
    code = main(
        ["bench", "data", "--shards", str(shard_dir), "--seconds", "0.3", "--workers", "0", "--json", str(out), *TINY]
    )
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    name, value = last.split()
    assert name == "samples_per_s_per_worker" and float(value) > 0
    result = json.loads(out.read_text())
    assert result["workers"] == 0 and result["image_size"] == 32 and result["samples"] > 0
    # each delivered sample's bytes once (the whole sample: its headers, image, text, label); with
    # workers=0 nothing is read ahead, so the mean over the samples read is near the split's mean
    assert 0.8 * result["mean_sample_bytes"] < result["bytes_read_per_sample"] < 1.2 * result["mean_sample_bytes"]


def test_bench_data_with_reference_and_workers(shard_dir, raw_dataset):
    cfg = load_config(None, [*TINY, f"data.shards={shard_dir}"])
    result = run_data_bench(cfg, seconds=0.3, workers=1, reference=str(raw_dataset.root))
    assert result["samples_per_s_per_worker"] > 0 and result["reference_samples_per_s"] > 0
    assert result["ratio_to_reference"] == pytest.approx(
        result["samples_per_s_per_worker"] / result["reference_samples_per_s"]
    )


def test_seed_style_reference_needs_a_data_root(tmp_path):
    from msa_dist.common.errors import MsaDistError

    with pytest.raises(MsaDistError, match="DATA_ROOT"):
        seed_style_samples_per_s(tmp_path, 0.1)


def test_seed_baseline_config_is_the_seed_setup():
    cfg = load_config(ROOT / "configs" / "seed_baseline.yaml")
    assert (cfg.backend.precision, cfg.data.max_length, cfg.data.pad_to_max_length, cfg.data.workers) == (
        "fp32",
        128,
        True,
        0,
    )
    fast = load_config(ROOT / "configs" / "gpu_fast.yaml")
    assert (fast.backend.precision, fast.data.max_length, fast.model.image.channels_last, fast.optim.fused) == (
        "bf16",
        64,
        True,
        True,
    )


def test_replicate_shards(shard_dir, tmp_path):
    out = tmp_path / "big"
    manifest = replicate_shards(shard_dir, out, copies=3, shard_size=10)
    assert manifest["splits"]["train"]["samples"] == 36
    keys = manifest["splits"]["train"]["guids"]
    assert len(set(keys)) == 36 and keys[0].endswith("_r0")
    assert verify_shards(out)["samples"] == sum(info["samples"] for info in manifest["splits"].values())
