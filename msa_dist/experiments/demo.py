"""`msa-dist demo`: synthetic data -> shards -> tiny model trained on the CPU -> evaluate -> predict."""

from __future__ import annotations

import time
from pathlib import Path

from msa_dist.common.display import console, print_metrics
from msa_dist.config.schema import load_config
from msa_dist.data.shards import build_shards, print_build_summary
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.engine.trainer import train
from msa_dist.experiments.report import write_run_report
from msa_dist.inference.evaluate import evaluate, predict

# The built-in default: the same schema as configs/*.yaml, sized for a 2-core CPU.
DEMO_CONFIG = {
    "data": {"image_size": 64, "resize_size": 64, "max_length": 32, "workers": 1},
    "model": {
        "modality": "both",
        "text": {"name": "tiny", "tiny_hidden": 64, "tiny_layers": 1, "tiny_heads": 2, "tiny_vocab_size": 500},
        "image": {"name": "tiny", "weights": "none", "tiny_width": 16},
        "head": {"proj_dim": 64, "hidden": 128, "dropout": 0.1},
    },
    "optim": {"lr": 2e-3, "text_lr": 1e-3, "image_lr": 1e-3, "warmup_steps": 10},
    "train": {"epochs": 4, "batch_size": 32, "seed": 0},
    "backend": {"name": "single", "device": "cpu"},
}


def run_demo(out: str = "msa-dist-demo", overrides: list[str] | None = None) -> dict:
    """Run the whole job on synthetic data under `out`; returns where things were written."""
    out_dir = Path(out).resolve()
    t0 = time.perf_counter()
    raw = write_synthetic_dataset(out_dir / "raw")
    shard_dir = out_dir / "shards"
    manifest = build_shards(raw, shard_dir, val_fraction=0.15, seed=0, shard_size=200, console=console)
    print_build_summary(manifest, console)
    cfg = load_config(base=DEMO_CONFIG, overrides=[f"data.shards={shard_dir}", *(overrides or [])])
    run_dir = out_dir / "run"
    summary = train(cfg, run_dir, overwrite=True)  # the demo writes everything under --out afresh
    write_run_report(run_dir)
    metrics = evaluate(str(run_dir), str(shard_dir), "val")
    print_metrics(metrics, "demo: val metrics of the best checkpoint")
    pred_file = out_dir / "predictions.csv"
    n = predict(str(run_dir), str(shard_dir), str(pred_file))
    console.print(f"\n[bold green]demo finished in {time.perf_counter() - t0:.0f}s[/]")
    console.print(
        f"  synthetic data   {raw}\n  shards           {shard_dir} (manifest.json)\n"
        f"  run directory    {run_dir} (config.yaml, metrics.jsonl, checkpoints/, report.md, curves.png)\n"
        f"  predictions      {pred_file} ({n} rows)"
    )
    return {"run_dir": run_dir, "shards": shard_dir, "predictions": pred_file, "val": metrics, "train": summary}
