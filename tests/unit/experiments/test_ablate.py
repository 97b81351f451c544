"""`msa-dist ablate` (experiments/ablate.py): three modalities trained and tabulated."""

from __future__ import annotations

import json

import pytest

from msa_dist.common.labels import LABELS
from msa_dist.config.schema import load_config
from msa_dist.experiments.ablate import run_ablation
from msa_dist.experiments.demo import DEMO_CONFIG

PER_CLASS = [f"{name}.{field}" for name in LABELS for field in ("precision", "recall", "f1")]


@pytest.mark.slow
def test_ablation_trains_three_modalities_and_tabulates_them(tmp_path, shard_dir):
    cfg = load_config(
        base=DEMO_CONFIG,
        overrides=[
            f"data.shards={shard_dir}",
            "data.image_size=32",
            "data.resize_size=32",
            "data.workers=0",
            "train.epochs=1",
            "train.batch_size=4",
            "log.progress=false",
            "log.every_steps=1",
            "model.head.fusion=gated",
            "model.text.tiny_vocab_size=100",
            "optim.warmup_steps=1",
        ],
    )
    rows = run_ablation(cfg, tmp_path / "ablation")
    assert [r["point"] for r in rows] == ["text", "image", "both"]
    assert [r["fusion"] for r in rows] == ["concat", "concat", "gated"]  # gated needs two modalities
    saved = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    for row in saved["rows"]:
        for key in ["accuracy", "macro_f1", *PER_CLASS]:
            assert 0.0 <= row[key] <= 1.0, key
    header = (tmp_path / "ablation" / "ablation.md").read_text().splitlines()[4]
    assert header.startswith("| modality | fusion | accuracy | macro-F1 |") and "neutral R" in header
    for modality in ("text", "image", "both"):
        assert load_config(tmp_path / "ablation" / modality / "config.yaml").model.modality == modality
        assert (tmp_path / "ablation" / modality / "report.md").is_file()
