"""`msa-dist bench train`: N training steps after warm-up, timed.

Built as the trainer builds a run (read_env, build_backend, backend.prepare, build_loss, the
trainer's TrainStream), with random weights of the configured sizes, and each step is the
trainer's own `TrainStep` (engine/step.py), read back one step late as the trainer does. The
GPU is synchronised only before the first and after the last timed step: the rate is the
steady state of the asynchronous loop. Per step the host times the wait for the next batch
(data wait) and the time between step boundaries; with the GPU ahead of nothing but its queue,
the median of the latter is the step time.
"""
from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path
from contextlib import closing
from typing import Iterator

import torch

from msa_dist.bench.build import bench_model, bench_tokenizer
from msa_dist.bench.flops import FlopModel, gpu_peak_tflops
from msa_dist.config import Config, to_dict
from msa_dist.data.loader import StreamSpec
from msa_dist.data.stream import TrainStream
from msa_dist.engine.backends import build_backend
from msa_dist.engine.losses import build_loss
from msa_dist.engine.runtime import read_env
from msa_dist.engine.step import TrainStep
from msa_dist.engine.trainer import class_weights, seed_everything
from msa_dist.errors import MsaDistError


def run_train_bench(cfg: Config, steps: int = 20, warmup: int = 5, peak_tflops: float = 0.0,
                    cudnn_benchmark: bool = False, profile: str = "") -> dict:
    """Warm up, time `steps` optimizer steps; returns the measurements (see `summarise`)."""
    if steps < 1 or warmup < 0:
        raise MsaDistError("bench train: --steps must be >= 1 and --warmup >= 0")
    torch.backends.cudnn.benchmark = cudnn_benchmark
    env = read_env(cfg.backend.device)
    backend = build_backend(cfg.backend, env)
    seed_everything(cfg.train.seed)
    tokenizer = bench_tokenizer(cfg, cfg.data.shards)
    model = bench_model(cfg, tokenizer)
    flop_model = FlopModel(model, cfg.data.image_size)
    tcfg = cfg.train
    backend.prepare(model, cfg.optim, warmup + steps, tcfg.grad_accum_steps, tcfg.batch_size)
    loss_fn = build_loss(tcfg, class_weights(cfg.data.shards).to(env.device))
    batches = _batches(cfg, env, tokenizer)
    records = _timed_steps(cfg, env, backend, loss_fn, batches, steps, warmup)
    peak_memory = (torch.cuda.max_memory_allocated(env.device) if env.device.type == "cuda"
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if profile:
        _profile_steps(cfg, env, backend, loss_fn, batches, profile)
    device_peak, device_name = gpu_peak_tflops(env.device)
    result = summarise(records, flop_model, peak_tflops or device_peak, env.world_size)
    result.update(bench="train", device=device_name, world_size=env.world_size, steps=steps, warmup=warmup,
                  cudnn_benchmark=cudnn_benchmark,
                  optimizer_steps_skipped=getattr(getattr(backend, "engine", None), "skipped_steps", None),
                  peak_memory_bytes=int(peak_memory),
                  peak_memory_kind="torch.cuda.max_memory_allocated" if env.device.type == "cuda"
                  else "process peak RSS", flops=flop_model.describe(), config=to_dict(cfg))
    return result


def _batches(cfg: Config, env, tokenizer) -> Iterator[dict]:
    """Training batches without end, from the trainer's stream."""
    first = StreamSpec("train", True, cfg.train.batch_size, env.rank, env.world_size, cfg.train.seed,
                       grad_accum_steps=cfg.train.grad_accum_steps)
    with closing(TrainStream(cfg.data, cfg.data.shards, first, tokenizer,
                             pin_memory=env.device.type == "cuda")) as stream:
        yield from stream.batches()


def _timed_steps(cfg: Config, env, backend, loss_fn, batches: Iterator[dict], steps: int, warmup: int) -> list[dict]:
    cuda = env.device.type == "cuda"
    accum = cfg.train.grad_accum_steps
    train_step = TrainStep(backend, loss_fn, cfg.model.modality)
    backend.model.train()
    records, pending = [], None
    for step in range(warmup + steps):
        if step == warmup and cuda:
            torch.cuda.synchronize(env.device)
            torch.cuda.reset_peak_memory_stats(env.device)
        start = time.perf_counter()
        wait = 0.0
        real_tokens = padded_tokens = 0
        for micro in range(accum):
            t0 = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - t0
            result = train_step(batch, is_boundary=micro == accum - 1)
            real_tokens += int(batch["attention_mask"].sum())  # a CPU tensor: no device sync
            padded_tokens += batch["input_ids"].numel()
        if pending is not None:
            pending.read()  # one step late, as the trainer's ledger reads it
        pending = result
        if step >= warmup:
            records.append({"step_s": time.perf_counter() - start, "data_wait_s": wait, "samples": result.samples,
                            "real_tokens": real_tokens, "padded_tokens": padded_tokens})
    final = pending.read()
    if cuda:
        torch.cuda.synchronize(env.device)
    records[-1]["step_s"] = time.perf_counter() - start  # the last step includes draining the GPU's queue
    records[-1]["loss"] = final["loss_sum"] / max(final["finite"], 1)
    return records


def _profile_steps(cfg: Config, env, backend, loss_fn, batches: Iterator[dict], path: str, steps: int = 3) -> None:
    """torch.profiler over a few more steps: the top operators by device (or CPU) time, as a text table."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        _timed_steps(cfg, env, backend, loss_fn, batches, steps, 0)
    sort = "self_cuda_time_total" if env.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=60)
    Path(path).write_text(f"torch.profiler, {steps} steps of the trainer's step, sorted by {sort}\n{table}\n")


def summarise(records: list[dict], flop_model: FlopModel, peak_tflops, world_size: int) -> dict:
    """Rates over the timed steps (per rank, and the job's samples/s = per rank x world size)."""
    total_s = sum(r["step_s"] for r in records)
    wait_s = sum(r["data_wait_s"] for r in records)
    samples = sum(r["samples"] for r in records)
    real_tokens = sum(r["real_tokens"] for r in records)
    flops = sum(flop_model.batch_flops(r["samples"], r["real_tokens"]) for r in records)
    achieved_tflops = flops / total_s / 1e12
    step_times = [r["step_s"] for r in records]
    return {
        "samples_per_s": samples / total_s * world_size,
        "samples_per_s_per_rank": samples / total_s,
        "text_tokens_per_s": real_tokens / total_s,
        "padded_tokens_per_s": sum(r["padded_tokens"] for r in records) / total_s,
        "mean_real_tokens_per_sample": real_tokens / samples,
        "step_s_mean": total_s / len(records),
        "step_s_median": statistics.median(step_times),
        "data_wait_s_mean": wait_s / len(records),
        "compute_s_mean": (total_s - wait_s) / len(records),
        "data_wait_fraction": wait_s / total_s,
        "train_flops_per_sample": flops / samples,
        "achieved_tflops_per_rank": achieved_tflops,
        "peak_bf16_tflops": peak_tflops,
        "mfu": achieved_tflops / peak_tflops if peak_tflops and achieved_tflops == achieved_tflops else None,
        "final_loss": records[-1]["loss"],
    }
