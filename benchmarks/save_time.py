"""How long the SIGTERM save of a BERT-base + ResNet-50 checkpoint takes (model + AdamW state).

torch elastic gives its workers 30 s between SIGTERM and SIGKILL, and a rank saves at its next
step boundary, so a step plus this save must fit in it. The model is the configured one
(configs/bert_resnet50.yaml: bert-base 12 x 768 and ResNet-50, random weights, no downloads);
one training step fills the AdamW moments; then `checkpoint.save_checkpoint` runs as on SIGTERM
(the backend's state, RNG, client.json, the atomic rename). Prints one JSON line per save.

  python benchmarks/save_time.py                                   # backend single, 3 saves
  python benchmarks/save_time.py --dir /fast/disk backend.name=deepspeed backend.zero_stage=2
  torchrun --nproc_per_node 2 benchmarks/save_time.py backend.name=deepspeed backend.zero_stage=2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BASE_OVERRIDES = [
    "model.text.name=bert-base-random",
    "model.image.weights=none",
    "backend.precision=fp32",
    "backend.device=cpu",
    "data.max_length=128",
    "train.batch_size=2",
]


class _VocabSize:
    """bench_model only asks the tokenizer for its length."""

    def __len__(self) -> int:
        return 30522


def _size_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to write the checkpoints (default: a temporary dir)")
    parser.add_argument("--repeats", type=int, default=3, help="saves to time")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. backend.name=deepspeed")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from msa_dist.bench.build import bench_model
    from msa_dist.config.schema import load_config
    from msa_dist.engine.backends import build_backend, leave_process_group
    from msa_dist.engine.checkpoint import files as ckpt
    from msa_dist.engine.runtime import read_env

    cfg = load_config(str(REPO / "configs" / "bert_resnet50.yaml"), [*BASE_OVERRIDES, *args.overrides])
    env = read_env(cfg.backend.device)
    backend = build_backend(cfg.backend, env)
    model = bench_model(cfg, _VocabSize())
    params = sum(p.numel() for p in model.parameters())
    backend.prepare(model, cfg.optim, total_steps=100, grad_accum_steps=1, micro_batch_size=cfg.train.batch_size)

    batch, size, dev = cfg.train.batch_size, cfg.data.image_size, env.device
    logits = backend.model(
        input_ids=torch.randint(0, 30522, (batch, cfg.data.max_length), device=dev),
        attention_mask=torch.ones(batch, cfg.data.max_length, dtype=torch.long, device=dev),
        images=torch.randn(batch, 3, size, size, device=dev),
    )
    labels = torch.zeros(batch, dtype=torch.long, device=dev)
    backend.backward(torch.nn.functional.cross_entropy(logits.float(), labels))
    backend.step(True)  # AdamW's exp_avg / exp_avg_sq now exist, as in any checkpoint after step 1

    root = Path(args.dir or tempfile.gettempdir()) / f"save-time-{os.getppid() if env.world_size > 1 else os.getpid()}"
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
    backend.barrier()
    client = {"train_state": {"step": 1}, "data": {}, "config": {}, "layout": {}}
    for i in range(args.repeats):
        backend.barrier()
        t0 = time.perf_counter()
        step_dir = ckpt.save_checkpoint(backend, root, i + 1, client, keep_last=1)
        seconds = time.perf_counter() - t0
        if env.is_main:
            print(
                json.dumps(
                    {
                        "backend": cfg.backend.name,
                        "zero_stage": cfg.backend.zero_stage,
                        "world_size": env.world_size,
                        "params": params,
                        "save_s": round(seconds, 2),
                        "checkpoint_bytes": _size_bytes(step_dir),
                        "dir": str(root),
                    }
                ),
                flush=True,
            )
    backend.barrier()
    if env.is_main:
        shutil.rmtree(root, ignore_errors=True)
    backend.close()
    leave_process_group()


if __name__ == "__main__":
    main()
