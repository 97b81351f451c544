"""One timed training step of `bench train`, and what the timed steps' distribution says.

The question these numbers answer: do the slow steps wait on work done once per new text
length (a cuDNN attention plan, a torch.compile recompile)? Texts are padded per batch, so the
padded length changes from step to step; each step records its length and whether that length
(any micro batch's) was new to this process, counting warm-up steps.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import torch

SLOW_FACTOR = 2.0  # a step slower than this times the median is "slow"
RECORD_KEYS = ("step_s", "data_wait_s", "sync_s", "padded_len", "first_seen_len")


def run_step(
    train_step, batches: Iterator[dict], accum: int, seen_lens: set, pending=None, pad_to: int = 0, pad_id: int = 0
) -> tuple[dict, object]:
    """One optimizer step (`accum` micro batches), then the previous step's numbers read back.

    `sync_s` is the wait in that read: time the host spent waiting on the device's queue. The
    rest of `step_s` minus `data_wait_s` is host work: building graphs, plans and kernels happens
    there. `pad_to` > 0 pads every micro batch's text to that length (profiling a new length).
    """
    start = time.perf_counter()
    wait, real_tokens, padded_tokens, padded_len, first_seen = 0.0, 0, 0, 0, False
    for micro in range(accum):
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        if pad_to:
            batch = pad_text(batch, pad_to, pad_id)
        result = train_step(batch, is_boundary=micro == accum - 1)
        length = batch["input_ids"].shape[1]
        first_seen |= length not in seen_lens
        seen_lens.add(length)
        padded_len = max(padded_len, length)
        real_tokens += int(batch["attention_mask"].sum())  # a CPU tensor: no device sync
        padded_tokens += batch["input_ids"].numel()
    queued = time.perf_counter()
    if pending is not None:
        pending.read()  # one step late, as the trainer's ledger reads it
    end = time.perf_counter()
    return {
        "step_s": end - start,
        "data_wait_s": wait,
        "sync_s": end - queued,
        "padded_len": padded_len,
        "first_seen_len": first_seen,
        "samples": result.samples,
        "real_tokens": real_tokens,
        "padded_tokens": padded_tokens,
    }, result


def pad_text(batch: dict, length: int, pad_id: int) -> dict:
    """The batch with its texts padded (masked) to `length` tokens; unchanged when already as long."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    extra = length - ids.shape[1]
    if extra <= 0:
        return batch
    return {
        **batch,
        "input_ids": torch.cat([ids, ids.new_full((ids.shape[0], extra), pad_id)], dim=1),
        "attention_mask": torch.cat([mask, mask.new_zeros((mask.shape[0], extra))], dim=1),
    }


def unseen_length(seen_lens: set, max_length: int, multiple: int, fixed: bool) -> int:
    """The longest padded length the loader could give that no step has had yet; 0 if none."""
    if fixed:  # data.pad_to_max_length: every batch has max_length tokens
        return 0
    return max((n for n in range(multiple, max_length + 1, multiple) if n not in seen_lens), default=0)


def compact(records: list[dict]) -> list[dict]:
    """The per-step records as they go into the result JSON (times rounded to microseconds)."""
    return [{key: round(r[key], 6) if isinstance(r[key], float) else r[key] for key in RECORD_KEYS} for r in records]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (q in [0, 100])."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def step_distribution(records: list[dict]) -> dict:
    """Percentiles of the step time, the slow steps, and step time by new vs repeated text length."""
    times = [r["step_s"] for r in records]
    threshold = SLOW_FACTOR * statistics.median(times)
    slow = [r for r in records if r["step_s"] > threshold]
    first = [r["step_s"] for r in records if r["first_seen_len"]]
    repeated = [r["step_s"] for r in records if not r["first_seen_len"]]
    slow_first = sum(r["first_seen_len"] for r in slow)
    return {
        "step_s_p50": percentile(times, 50),
        "step_s_p95": percentile(times, 95),
        "step_s_p99": percentile(times, 99),
        "step_s_max": max(times),
        "slow_step_threshold_s": threshold,
        "slow_steps": len(slow),
        "slow_steps_first_seen_len": slow_first,
        "slow_first_seen_share": slow_first / len(slow) if slow else None,
        "slow_steps_sync_s_mean": _mean([r["sync_s"] for r in slow]),
        "first_seen_len_steps": len(first),
        "first_seen_len_step_s_mean": _mean(first),
        "repeated_len_step_s_mean": _mean(repeated),
        "distinct_padded_lens": len({r["padded_len"] for r in records}),
    }
