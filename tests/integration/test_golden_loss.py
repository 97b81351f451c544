"""A golden loss curve: a refactor that should not change numerics must reproduce these losses.

Image-only, so the (non-deterministic across processes) WordPiece training cannot move it; CPU,
fp32, fixed seed, synthetic data written by the demo's generator. If a change is *meant* to alter
the numerics (a new augmentation, a different init), regenerate the numbers and say so in the commit.
"""

from __future__ import annotations

import json

import pytest

from msa_dist.config.schema import load_config
from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.engine.trainer import train
from msa_dist.experiments.demo import DEMO_CONFIG

GOLDEN = {  # per-step train loss for each training crop; re-pinned when the epoch order became a keyed
    # permutation computed on demand (data/loading/order.py, ORDER_VERSION 2: chunks of 4 over the split's ids)
    "random": [
        1.0983132123947144,
        1.0628212690353394,
        0.9814974665641785,
        0.9376468062400818,
        0.9878160357475281,
        0.8444330096244812,
    ],
    "random_resized": [
        1.0971484184265137,
        1.0639852285385132,
        0.9810675382614136,
        0.9360416531562805,
        0.9962083697319031,
        0.83994060754776,
    ],
}


@pytest.mark.parametrize("train_crop", sorted(GOLDEN))
def test_golden_loss_curve(tmp_path, train_crop):
    raw = write_synthetic_dataset(tmp_path / "raw", n_labelled=120, n_test=4, seed=3, image_px=48)
    build_shards(raw, tmp_path / "shards", val_fraction=0.2, seed=0, shard_size=40)
    cfg = load_config(
        base=DEMO_CONFIG,
        overrides=[
            f"data.shards={tmp_path / 'shards'}",
            "model.modality=image",
            "data.workers=0",
            "data.image_size=32",
            "data.resize_size=32",
            "train.epochs=1",
            "train.batch_size=16",
            "optim.warmup_steps=0",
            "log.every_steps=1",
            "log.progress=false",
            f"data.train_crop={train_crop}",
        ],
    )
    train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert losses == pytest.approx(GOLDEN[train_crop], rel=1e-4, abs=1e-6)
