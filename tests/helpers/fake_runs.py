"""A stand-in for `trainer.train` that leaves what a finished run leaves (the sweep and report tests)."""

from __future__ import annotations

import json
from pathlib import Path

from msa_dist.common.labels import LABELS
from msa_dist.config.schema import Config, load_config, save_config
from msa_dist.experiments.demo import DEMO_CONFIG


def fake_metrics(accuracy: float) -> dict:
    """A metrics dict like the trainer's evaluation writes."""
    per_class = {name: {"precision": accuracy, "recall": accuracy, "f1": accuracy, "support": 10} for name in LABELS}
    return {
        "accuracy": accuracy,
        "macro_f1": accuracy - 0.1,
        "weighted_f1": accuracy - 0.05,
        "samples": 30,
        "per_class": per_class,
        "confusion_matrix": [[8, 1, 1], [2, 6, 2], [0, 3, 7]],
    }


class FakeTrain:
    """Stands in for `trainer.train`: writes what a finished run leaves behind; val accuracy = optim.lr * 1000."""

    def __init__(self, preempt: set[str] = frozenset()):
        self.calls: list[str] = []
        self.preempt = preempt

    def __call__(self, cfg: Config, run_dir: Path) -> dict:
        run_dir = Path(run_dir)
        self.calls.append(run_dir.name)
        (run_dir / "checkpoints").mkdir(parents=True)
        save_config(cfg, run_dir / "config.yaml")
        if run_dir.name in self.preempt:
            return {"status": "preempted"}
        accuracy = cfg.optim.lr * 1000
        records = [{"type": "train", "epoch": 0, "step": s, "loss": 1.0 / s, "lr": cfg.optim.lr} for s in (1, 2, 3)]
        records += [
            {"type": "eval", "epoch": e, "step": 3 * e, "split": "val", **fake_metrics(accuracy - 0.1 / e)}
            for e in (1, 2)
        ]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (run_dir / "checkpoints" / "best").mkdir()
        (run_dir / "checkpoints" / "best" / "metrics.json").write_text(json.dumps(records[-1]))
        return {"status": "finished"}


def sweep_cfg(tmp_path) -> Config:
    return load_config(base=DEMO_CONFIG, overrides=[f"data.shards={tmp_path / 'shards'}"])
