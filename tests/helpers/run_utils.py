"""The smallest trainable config (a 2-epoch run on the conftest shards takes a second or two)."""

from __future__ import annotations

from pathlib import Path

from msa_dist.config.schema import Config, load_config

TINY = [
    "data.image_size=32",
    "data.resize_size=36",
    "data.workers=0",
    "data.max_length=24",
    "model.text.name=tiny",
    "model.text.tiny_vocab_size=200",
    "model.text.tiny_hidden=16",
    "model.text.tiny_layers=1",
    "model.text.tiny_heads=2",
    "model.image.name=tiny",
    "model.image.weights=none",
    "model.image.tiny_width=4",
    "model.head.proj_dim=16",
    "model.head.hidden=16",
    "train.batch_size=4",
    "train.epochs=2",
    "log.every_steps=1",
    "log.progress=false",
    "backend.device=cpu",
    "optim.warmup_steps=1",
]

# The bench tests' tiny model (tests/unit/bench/): smaller widths, 16 tokens, batch 4, no workers.
BENCH_TINY = [
    "model.text.name=tiny",
    "model.text.tiny_hidden=16",
    "model.text.tiny_layers=1",
    "model.text.tiny_heads=2",
    "model.text.tiny_vocab_size=120",
    "model.image.name=tiny",
    "model.image.weights=none",
    "model.image.tiny_width=4",
    "model.head.proj_dim=8",
    "model.head.hidden=8",
    "data.image_size=32",
    "data.resize_size=40",
    "data.max_length=16",
    "data.workers=0",
    "train.batch_size=4",
    "backend.device=cpu",
    "log.progress=false",
]


def tiny_config(shards: Path, *overrides: str) -> Config:
    """TINY on `shards`, then `overrides`."""
    return load_config(None, [*TINY, f"data.shards={shards}", *overrides])


def finished_tiny_run(root: Path) -> tuple[Path, Path, Path]:
    """(shards, config YAML, run dir) of a finished 2-epoch tiny run under `root`: checkpoints step-3 and step-6."""
    import yaml
    from raw_data import make_raw_dataset

    from msa_dist.config.schema import to_dict
    from msa_dist.data.shards import build_shards
    from msa_dist.engine.trainer import train

    raw = make_raw_dataset(root / "raw")
    build_shards(raw.root, root / "shards", val_fraction=1 / 3, seed=0, shard_size=4)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(tiny_config(root / "shards"))))
    train(tiny_config(root / "shards"), root / "run")
    return root / "shards", config, root / "run"


def scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a TensorBoard log dir, read back by tensorboard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
