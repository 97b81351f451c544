"""A golden loss curve: a refactor that should not change numerics must reproduce these losses.

Image-only, so the (non-deterministic across processes) WordPiece training cannot move it; CPU,
fp32, fixed seed, synthetic data written by the demo's generator. If a change is *meant* to alter
the numerics (a new augmentation, a different init), regenerate the numbers and say so in the commit.
"""
from __future__ import annotations

import json

import pytest

from msa_dist.config import load_config
from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.demo import DEMO_CONFIG
from msa_dist.engine.trainer import train

GOLDEN = {  # per-step train loss for each training crop; re-pinned when the epoch order became a
    # function of (seed, epoch) alone (data/order.py: chunks of 4 shuffled over the split)
    "random": [1.0880117416381836, 1.0526697635650635, 0.9617052674293518, 0.9695649743080139,
               0.9168601036071777, 0.887453019618988],
    "random_resized": [1.0901753902435303, 1.0505532026290894, 0.9633101224899292, 0.9669949412345886,
                       0.9340656399726868, 0.8877558708190918],
}


@pytest.mark.parametrize("train_crop", sorted(GOLDEN))
def test_golden_loss_curve(tmp_path, train_crop):
    raw = write_synthetic_dataset(tmp_path / "raw", n_labelled=120, n_test=4, seed=3, image_px=48)
    build_shards(raw, tmp_path / "shards", val_fraction=0.2, seed=0, shard_size=40)
    cfg = load_config(base=DEMO_CONFIG, overrides=[
        f"data.shards={tmp_path / 'shards'}", "model.modality=image", "data.workers=0", "data.image_size=32",
        "data.resize_size=32", "train.epochs=1", "train.batch_size=16", "optim.warmup_steps=0", "log.every_steps=1",
        "log.progress=false", f"data.train_crop={train_crop}"])
    train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert losses == pytest.approx(GOLDEN[train_crop], rel=1e-4, abs=1e-6)
