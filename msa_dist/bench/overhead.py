"""`msa-dist bench train --plain-loop`: the trainer's step beside a plain PyTorch loop, interleaved.

Both sides train the same model with the same optimizer, schedule, loss and batches, in one
process: the trainer's side is `TrainStep` read back one step late (as `bench train` and the
trainer run it); the plain side is forward, loss, backward, clip, `optimizer.step()`,
`scheduler.step()`, `zero_grad()`. A fixed list of batches is loaded first and replayed by every
block, so data loading is outside both. Blocks alternate A B, B A, ... (the order swaps each
round) so that a load or a thermal drift on shared cores hits both sides alike. The overhead is
the trainer's summed step time over the plain loop's, minus one; each round's ratio is kept too.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from pathlib import Path

import torch

from msa_dist.bench.build import bench_model, bench_tokenizer
from msa_dist.bench.steps import run_step
from msa_dist.bench.train import train_batches
from msa_dist.common.display import console
from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import Config, to_dict
from msa_dist.engine.backends import build_backend
from msa_dist.engine.batch import model_inputs
from msa_dist.engine.losses import build_loss
from msa_dist.engine.runtime import read_env
from msa_dist.engine.step import TrainStep
from msa_dist.engine.trainer import class_weights, seed_everything

SIDES = ("trainer", "plain")


class PlainLoop:
    """The textbook loop over the backend's model, optimizer and schedule (one micro batch per step)."""

    def __init__(self, backend, loss_fn, modality: str, grad_clip: float):
        self.backend, self.loss_fn, self.modality, self.grad_clip = backend, loss_fn, modality, grad_clip
        self.params = [p for p in backend.module.parameters() if p.requires_grad]

    def step(self, batch: dict) -> torch.Tensor:
        device = self.backend.env.device
        inputs = model_inputs(batch, device, self.modality)
        labels = batch["labels"].to(device, non_blocking=device.type == "cuda")
        with self.backend.autocast():
            logits = self.backend.model(**inputs).float()
        loss = self.loss_fn(logits, labels)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.backend.optimizer.step()
        self.backend.scheduler.step()
        self.backend.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def run_overhead_bench(cfg: Config, steps: int = 10, rounds: int = 6, warmup: int = 3, profile: str = "") -> dict:
    """`rounds` x (a block of `steps` trainer steps, a block of `steps` plain steps), order swapped each round."""
    if steps < 1 or rounds < 1 or warmup < 0:
        raise MsaDistError("bench train --plain-loop: --steps and --rounds must be >= 1 and --warmup >= 0")
    if cfg.train.grad_accum_steps != 1 or cfg.backend.name != "single" or cfg.train.global_batch_size:
        raise MsaDistError(
            "bench train --plain-loop compares one process's step: use backend.name=single and "
            "train.grad_accum_steps=1 (train.global_batch_size=0)"
        )
    env, backend, loss_fn, tokenizer = build_pair(cfg, 2 * (warmup + rounds * steps) + 8)
    stream = train_batches(cfg, env, tokenizer)
    fixed = list(itertools.islice(stream, steps))
    stream.close()  # the loader's workers stop: no read-ahead competes with the timed blocks
    sides = {"trainer": _TrainerSide(backend, loss_fn, cfg.model.modality), "plain": _PlainSide(backend, loss_fn, cfg)}
    backend.model.train()
    load_before = os.getloadavg()
    for name in SIDES:  # warm-up: allocator, kernels, the optimizer's moment buffers
        sides[name].block(fixed[:warmup] or fixed[:1], env)
    records = []
    for r in range(rounds):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        record = {"order": "".join(n[0] for n in order)}
        for name in order:
            record[name] = sides[name].block(fixed, env)
        records.append(record)
        times = ", ".join(f"{name} {record[name]['total_s']:.2f} s" for name in order)
        console.print(f"round {r + 1}/{rounds}: {times}", highlight=False)  # a long run shows it is alive
    result = summarise_rounds(records, steps)
    if profile:
        result["profile_extra_ops"] = profile_both(sides, fixed, env, profile)
    result.update(
        bench="train-overhead",
        steps_per_block=steps,
        rounds=rounds,
        warmup=warmup,
        samples_per_step=len(fixed[0]["keys"]),
        load_avg_before=list(load_before),
        load_avg_after=list(os.getloadavg()),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        config=to_dict(cfg),
    )
    return result


def build_pair(cfg: Config, total_steps: int) -> tuple:
    """(env, backend, loss, tokenizer), built as `bench train` builds them: what both sides share."""
    env = read_env(cfg.backend.device)
    backend = build_backend(cfg.backend, env)
    seed_everything(cfg.train.seed)
    tokenizer = bench_tokenizer(cfg, cfg.data.shards)
    backend.prepare(bench_model(cfg, tokenizer), cfg.optim, total_steps, 1, cfg.train.batch_size)
    return env, backend, build_loss(cfg.train, class_weights(cfg.data.shards).to(env.device)), tokenizer


class _TrainerSide:
    """Blocks of the trainer's step: `TrainStep`, each step's numbers read one step late."""

    def __init__(self, backend, loss_fn, modality: str):
        self.train_step = TrainStep(backend, loss_fn, modality)

    def block(self, batches: list[dict], env) -> dict:
        seen: set[int] = set()
        times, pending, it = [], None, iter(batches)
        start = time.perf_counter()
        for _ in batches:
            record, pending = run_step(self.train_step, it, 1, seen, pending)
            times.append(record["step_s"])
        tail = time.perf_counter()
        pending.read()
        _sync(env)
        times[-1] += time.perf_counter() - tail  # the last step's read-back belongs to it
        return {"total_s": time.perf_counter() - start, "step_s": times}


class _PlainSide:
    """Blocks of `PlainLoop.step`; the last loss read back at the end (one host sync per block)."""

    def __init__(self, backend, loss_fn, cfg: Config):
        self.loop = PlainLoop(backend, loss_fn, cfg.model.modality, cfg.optim.grad_clip)

    def block(self, batches: list[dict], env) -> dict:
        times, loss = [], None
        start = time.perf_counter()
        for batch in batches:
            t0 = time.perf_counter()
            loss = self.loop.step(batch)
            times.append(time.perf_counter() - t0)
        tail = time.perf_counter()
        float(loss)
        _sync(env)
        times[-1] += time.perf_counter() - tail
        return {"total_s": time.perf_counter() - start, "step_s": times}


def _sync(env) -> None:
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)


def summarise_rounds(records: list[dict], steps: int) -> dict:
    """The overhead (summed trainer time / summed plain time - 1), per round and over all rounds."""
    total = {name: sum(r[name]["total_s"] for r in records) for name in SIDES}
    per_step = {name: [t for r in records for t in r[name]["step_s"]] for name in SIDES}
    ratios = [r["trainer"]["total_s"] / r["plain"]["total_s"] for r in records]
    return {
        "overhead": total["trainer"] / total["plain"] - 1,
        "overhead_median_round": statistics.median(ratios) - 1,
        "overhead_min_round": min(ratios) - 1,
        "overhead_max_round": max(ratios) - 1,
        "trainer_step_s_mean": total["trainer"] / (steps * len(records)),
        "plain_step_s_mean": total["plain"] / (steps * len(records)),
        "trainer_step_s_median": statistics.median(per_step["trainer"]),
        "plain_step_s_median": statistics.median(per_step["plain"]),
        "overhead_of_medians": statistics.median(per_step["trainer"]) / statistics.median(per_step["plain"]) - 1,
        "round_records": [  # unrounded: the rounds' sums must give the overhead above
            {"order": r["order"], **{f"{n}_s": r[n]["total_s"] for n in SIDES}, "ratio": q}
            for r, q in zip(records, ratios)
        ],
    }


def profile_both(sides: dict, batches: list[dict], env, path: str, top: int = 25) -> list[dict]:
    """torch.profiler over one block of each side; the operators where the trainer spends more host
    time than the plain loop (self CPU time, summed over the block), written to `path` and returned."""
    from torch.profiler import ProfilerActivity, profile

    totals = {}
    for name in SIDES:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            sides[name].block(batches, env)
        totals[name] = {e.key: (e.self_cpu_time_total, e.count) for e in prof.key_averages()}
    keys = set(totals["trainer"]) | set(totals["plain"])
    rows = []
    for key in keys:
        (t_us, t_n), (p_us, p_n) = totals["trainer"].get(key, (0.0, 0)), totals["plain"].get(key, (0.0, 0))
        rows.append({"op": key, "extra_ms": (t_us - p_us) / 1e3, "trainer_calls": t_n, "plain_calls": p_n})
    rows.sort(key=lambda row: -row["extra_ms"])
    sums = {name: sum(t for t, _ in totals[name].values()) / 1e3 for name in SIDES}
    lines = [
        f"One block of {len(batches)} steps per side; self CPU ms, trainer {sums['trainer']:.1f} vs plain "
        f"{sums['plain']:.1f} (profiler overhead included). Operators by extra time in the trainer:",
        f"{'operator':60s} {'extra ms':>10s} {'trainer calls':>14s} {'plain calls':>12s}",
    ]
    lines += [f"{r['op'][:60]:60s} {r['extra_ms']:10.2f} {r['trainer_calls']:14d} {r['plain_calls']:12d}" for r in rows]
    Path(path).write_text("\n".join(lines) + "\n")
    return rows[:top]
