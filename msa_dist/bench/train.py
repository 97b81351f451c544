"""`msa-dist bench train`: N training steps after warm-up, timed.

Built as the trainer builds a run (read_env, build_backend, backend.prepare, build_loss, the
trainer's TrainStream), with random weights of the configured sizes, and each step is the
trainer's own `TrainStep` (engine/step.py), read back one step late as the trainer does. The
GPU is synchronised only before the first and after the last timed step: the rate is the
steady state of the asynchronous loop. Per step the host times the wait for the next batch
(data wait) and the time between step boundaries; with the GPU ahead of nothing but its queue,
the median of the latter is the step time. Each step also records its padded text length and
whether that length was new to the process (bench/steps.py: the evidence for or against work
done once per shape); the warm-up's wall time and the first step's are reported apart.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import torch

from msa_dist.bench.build import bench_model, bench_tokenizer
from msa_dist.bench.flops import FlopModel, gpu_peak_tflops
from msa_dist.bench.steps import SLOW_FACTOR, compact, run_step, step_distribution, unseen_length
from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import Config, to_dict
from msa_dist.data.loading.loader import StreamSpec
from msa_dist.data.loading.stream import TrainStream
from msa_dist.engine.backends import build_backend
from msa_dist.engine.losses import build_loss
from msa_dist.engine.runtime import read_env
from msa_dist.engine.step import TrainStep
from msa_dist.engine.trainer import class_weights, seed_everything


def run_train_bench(
    cfg: Config,
    steps: int = 20,
    warmup: int = 5,
    peak_tflops: float = 0.0,
    cudnn_benchmark: bool = False,
    profile: str = "",
) -> dict:
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
    batches = train_batches(cfg, env, tokenizer)
    seen_lens: set[int] = set()  # padded text lengths this process has trained on, warm-up included
    timing = _timed_steps(cfg, env, backend, loss_fn, batches, steps, warmup, seen_lens)
    records = timing.pop("records")
    peak_memory = (
        torch.cuda.max_memory_allocated(env.device)
        if env.device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    per_rank = [int(peak_memory)]
    if env.world_size > 1:  # sharding backends (ZeRO-3, FSDP) differ in what each rank holds
        per_rank = [None] * env.world_size
        torch.distributed.all_gather_object(per_rank, int(peak_memory))
    device_peak, device_name = gpu_peak_tflops(env.device)
    result = summarise(records, flop_model, peak_tflops or device_peak, env.world_size, timing["drain_s"])
    result.update(step_distribution(records))
    if profile:
        result["profile_single_steps"] = _profile_steps(
            cfg,
            env,
            backend,
            loss_fn,
            batches,
            profile,
            seen_lens,
            tokenizer.pad_token_id or 0,
            result["step_s_median"],
        )
    result.update(
        bench="train",
        device=device_name,
        world_size=env.world_size,
        steps=steps,
        warmup=warmup,
        cudnn_benchmark=cudnn_benchmark,
        optimizer_steps_skipped=getattr(getattr(backend, "engine", None), "skipped_steps", None),
        peak_memory_bytes=int(peak_memory),
        peak_memory_bytes_per_rank=per_rank,
        peak_memory_kind="torch.cuda.max_memory_allocated" if env.device.type == "cuda" else "process peak RSS",
        flops=flop_model.describe(),
        warmup_s=timing["warmup_s"],
        first_step_s=timing["first_step_s"],
        first_step_data_wait_s=timing["first_step_data_wait_s"],
        drain_s=timing["drain_s"],
        step_records=compact(records),
        warmup_records=compact(timing["warmup_records"]),
        config=to_dict(cfg),
    )
    return result


def train_batches(cfg: Config, env, tokenizer) -> Iterator[dict]:
    """Training batches without end, from the trainer's stream."""
    first = StreamSpec(
        "train",
        True,
        cfg.train.batch_size,
        env.rank,
        env.world_size,
        cfg.train.seed,
        grad_accum_steps=cfg.train.grad_accum_steps,
    )
    with closing(
        TrainStream(cfg.data, cfg.data.shards, first, tokenizer, pin_memory=env.device.type == "cuda")
    ) as stream:
        yield from stream.batches()


def _timed_steps(
    cfg: Config, env, backend, loss_fn, batches: Iterator[dict], steps: int, warmup: int, seen_lens: set
) -> dict:
    """`warmup` then `steps` steps: the records of both, the warm-up's wall time, the first step's
    time, and the drain (the wait for the device's queue after the last step, kept out of its record)."""
    cuda = env.device.type == "cuda"
    train_step = TrainStep(backend, loss_fn, cfg.model.modality)
    backend.model.train()
    records, pending, out = [], None, {}
    begin = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            if cuda:
                torch.cuda.synchronize(env.device)  # warm-up's queued work belongs to warm-up
                torch.cuda.reset_peak_memory_stats(env.device)
            out["warmup_s"] = time.perf_counter() - begin  # with torch.compile: the compile cost
        record, pending = run_step(train_step, batches, cfg.train.grad_accum_steps, seen_lens, pending)
        if step == 0:
            if cuda and warmup:  # only inside warm-up: a sync in the timed steps would change them
                torch.cuda.synchronize(env.device)
            out["first_step_s"], out["first_step_data_wait_s"] = time.perf_counter() - begin, record["data_wait_s"]
        records.append(record)
    drain_start = time.perf_counter()
    final = pending.read()
    if cuda:
        torch.cuda.synchronize(env.device)
    out["drain_s"] = time.perf_counter() - drain_start
    records[-1]["loss"] = final["loss_sum"] / max(final["finite"], 1)
    out["warmup_records"], out["records"] = records[:warmup], records[warmup:]
    return out


def _profile_steps(
    cfg: Config,
    env,
    backend,
    loss_fn,
    batches: Iterator[dict],
    path: str,
    seen_lens: set,
    pad_id: int,
    median_s: float,
    steps: int = 3,
    single_steps: int = 4,
) -> list[dict]:
    """torch.profiler: the top operators of `steps` more steps, then of the slowest of `single_steps`
    steps profiled one by one, every second padded to a text length not seen yet. Returns those steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.device.type == "cuda" else [])
    sort = "self_cuda_time_total" if env.device.type == "cuda" else "self_cpu_time_total"
    with profile(activities=activities) as prof:
        _timed_steps(cfg, env, backend, loss_fn, batches, steps, 0, seen_lens)
    sections = [f"torch.profiler, {steps} steps of the trainer's step, sorted by {sort}\n{_top_ops(prof, sort)}\n"]
    train_step = TrainStep(backend, loss_fn, cfg.model.modality)
    singles, slowest_table = [], ""
    for i in range(single_steps):
        pad_to = (
            unseen_length(seen_lens, cfg.data.max_length, cfg.data.pad_to_multiple_of, cfg.data.pad_to_max_length)
            if i % 2
            else 0
        )
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            record, result = run_step(train_step, batches, cfg.train.grad_accum_steps, seen_lens, None, pad_to, pad_id)
            result.read()
            if env.device.type == "cuda":
                torch.cuda.synchronize(env.device)  # the step's own device work inside its profile
            record["step_s"] = time.perf_counter() - start
        single = {
            "step_s": round(record["step_s"], 6),
            "padded_len": record["padded_len"],
            "first_seen_len": record["first_seen_len"],
            "padded_to_unseen": pad_to,
        }
        if not singles or single["step_s"] > max(s["step_s"] for s in singles):
            slowest_table = _top_ops(prof, sort)
        singles.append(single)
    sections.append(_single_steps_header(singles, median_s, sort) + slowest_table + "\n")
    Path(path).write_text("\n".join(sections))
    return singles


def _top_ops(prof, sort: str) -> str:
    return prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=60)


def _single_steps_header(singles: list[dict], median_s: float, sort: str) -> str:
    lines = [
        f"Single steps, each profiled alone and synchronised (profiler overhead included); the timed "
        f"steps' median {1e3 * median_s:.1f} ms, slow > {SLOW_FACTOR:g}x that:"
    ]
    for i, s in enumerate(singles):
        how = f"padded to {s['padded_to_unseen']}, unseen before" if s["padded_to_unseen"] else "as loaded"
        lines.append(
            f"  step {i}: {1e3 * s['step_s']:.1f} ms, text length {s['padded_len']} "
            f"({'first seen' if s['first_seen_len'] else 'seen before'}; {how})"
        )
    slowest = max(range(len(singles)), key=lambda i: singles[i]["step_s"])
    verdict = "slow" if singles[slowest]["step_s"] > SLOW_FACTOR * median_s else "not slow"
    lines.append(f"The slowest, step {slowest} ({verdict}), alone, sorted by {sort}:")
    return "\n".join(lines) + "\n"


def summarise(records: list[dict], flop_model: FlopModel, peak_tflops, world_size: int, drain_s: float = 0.0) -> dict:
    """Rates over the timed steps (per rank, and the job's samples/s = per rank x world size);
    `drain_s`, the wait for the device after the last step, counts in the rates."""
    total_s = sum(r["step_s"] for r in records) + drain_s
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
