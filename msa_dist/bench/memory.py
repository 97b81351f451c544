"""`msa-dist bench memory`: the largest micro batch whose training step fits on the device.

The configured model with random weights on one device (the single backend: autocast, AdamW),
fed random token ids of `data.max_length` and random images of `data.image_size`. The batch
doubles from `--start` until a step runs out of memory, then a bisection narrows the gap to
`--resolution` samples. Each try is forward + backward + optimizer step, with the allocator's
peak read after it.
"""

from __future__ import annotations

import time

import torch

from msa_dist.bench.build import bench_model
from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import Config, to_dict
from msa_dist.engine.backends import build_backend
from msa_dist.engine.runtime import read_env


def _fits(backend, batch: int, cfg: Config) -> tuple[bool, int]:
    """One training step at this batch: (fits, peak bytes)."""
    device = backend.env.device
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        inputs = {}
        if cfg.model.modality in ("both", "text"):
            inputs["input_ids"] = torch.randint(5, 1000, (batch, cfg.data.max_length), device=device)
            inputs["attention_mask"] = torch.ones(batch, cfg.data.max_length, dtype=torch.long, device=device)
        if cfg.model.modality in ("both", "image"):
            inputs["images"] = torch.randn(batch, 3, cfg.data.image_size, cfg.data.image_size, device=device)
        with backend.autocast():
            logits = backend.model(**inputs)
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.zeros(batch, dtype=torch.long, device=device))
        backend.backward(loss)
        backend.step(True)
        torch.cuda.synchronize(device)
        return True, torch.cuda.max_memory_allocated(device)
    except torch.OutOfMemoryError:
        return False, 0
    finally:
        backend.optimizer.zero_grad(set_to_none=True)
        inputs = logits = loss = None


def run_memory_bench(cfg: Config, tokenizer, start: int = 64, limit: int = 65536, resolution: int = 32) -> dict:
    """Double, then bisect; returns the largest fitting batch, its peak memory and every try."""
    env = read_env(cfg.backend.device)
    if env.device.type != "cuda":
        raise MsaDistError("bench memory needs a GPU (backend.device=cuda)")
    backend = build_backend(cfg.backend, env)
    t0 = time.perf_counter()
    backend.prepare(bench_model(cfg, tokenizer), cfg.optim, 10**6, 1, start)
    backend.model.train()
    tries, low, high, batch = [], 0, None, start
    while batch <= limit and (high is None or high - low > resolution):
        fits, peak = _fits(backend, batch, cfg)
        tries.append({"batch": batch, "fits": fits, "peak_memory_bytes": peak})
        if fits:
            low = batch
        else:
            high = batch
        batch = batch * 2 if high is None else (low + high) // 2
    best = max((t for t in tries if t["fits"]), key=lambda t: t["batch"], default=None)
    return {
        "bench": "memory",
        "device": torch.cuda.get_device_name(env.device),
        "total_memory_bytes": torch.cuda.get_device_properties(env.device).total_memory,
        "largest_batch": best["batch"] if best else 0,
        "peak_memory_bytes": best["peak_memory_bytes"] if best else 0,
        "first_failing_batch": high,
        "tries": tries,
        "seconds": round(time.perf_counter() - t0, 1),
        "config": to_dict(cfg),
    }
