"""Printing benchmark results (rich tables; the data bench's last line is machine-readable) and JSON files."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

GIB = 1024**3


def environment() -> dict:
    """What the numbers were measured on."""
    env = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def write_json(result: dict, path: str | None) -> None:
    """Write one result (with the environment) as JSON; nothing when `path` is empty."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({**result, "environment": environment()}, indent=1) + "\n")


def print_data_result(result: dict, console: Console) -> None:
    table = Table(
        title=f"bench data: split {escape(result['split'])}, {result['workers']} workers, batch {result['batch_size']}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("samples/s (all workers)", f"{result['samples_per_s']:.0f}"),
        ("samples/s per worker core", f"{result['samples_per_s_per_worker']:.0f}"),
        ("image size (shards stored at)", f"{result['image_size']} ({result['shard_image_size'] or 'original'})"),
        ("decode on device", str(result["decode_on_device"])),
        (
            "first batch after (s): from the shard set's opening (from the stream's start)",
            f"{result.get('time_to_first_batch_s', float('nan')):.2f} ({result['first_batch_s']:.2f})",
        ),
        ("requests per sample", f"{result.get('requests_per_sample', float('nan')):.3f}"),
        ("timed samples / seconds", f"{result['samples']} / {result['seconds']:.1f}"),
        (
            "bytes read per sample (mean sample in the shards)",
            f"{result['bytes_read_per_sample']:.0f} ({result['mean_sample_bytes']:.0f})",
        ),
    ]
    if "reference_samples_per_s" in result:
        rows += [
            ("seed-style reference samples/s (1 core)", f"{result['reference_samples_per_s']:.0f}"),
            ("ratio per core", f"{result['ratio_to_reference']:.1f}x"),
        ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    # The last lines, for scripts: the rate is the very last.
    print(
        f"bytes_read_per_sample {result['bytes_read_per_sample']:.1f} (mean sample {result['mean_sample_bytes']:.1f})",
        flush=True,
    )
    if "requests_per_sample" in result:
        print(
            f"requests_per_sample {result['requests_per_sample']:.4f} time_to_first_batch_s "
            f"{result['time_to_first_batch_s']:.2f}",
            flush=True,
        )
    print(f"samples_per_s_per_worker {result['samples_per_s_per_worker']:.1f}", flush=True)


def print_train_result(result: dict, console: Console) -> None:
    cfg = result["config"]
    title = (
        f"bench train on {escape(result['device'])}: {cfg['model']['text']['name']} + "
        f"{cfg['model']['image']['name']}, {cfg['backend']['precision']}, batch {cfg['train']['batch_size']}"
        f" x {result['world_size']} ranks, {result['steps']} steps after {result['warmup']} warm-up"
    )
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    mfu = result["mfu"]
    rows = [
        ("samples/s", f"{result['samples_per_s']:.1f}"),
        ("text tokens/s (real / padded)", f"{result['text_tokens_per_s']:.0f} / {result['padded_tokens_per_s']:.0f}"),
        (
            "step ms p50/mean/p95/p99/max",
            " / ".join(
                f"{1e3 * result[k]:.1f}"
                for k in ("step_s_p50", "step_s_mean", "step_s_p95", "step_s_p99", "step_s_max")
            ),
        ),
        (f"  slow steps (> 2x p50: {_ms(result['slow_step_threshold_s'])} ms)", _slow_steps(result)),
        (
            "  mean ms at a new / repeated length",
            f"{_ms(result['first_seen_len_step_s_mean'])} ({result['first_seen_len_steps']} steps) / "
            f"{_ms(result['repeated_len_step_s_mean'])} ({result['steps'] - result['first_seen_len_steps']})",
        ),
        ("  distinct padded text lengths", str(result["distinct_padded_lens"])),
        ("  data wait (ms)", f"{1e3 * result['data_wait_s_mean']:.1f} ({100 * result['data_wait_fraction']:.1f}%)"),
        ("  compute (ms)", f"{1e3 * result['compute_s_mean']:.1f}"),
        (
            "warm-up s / first step s (data wait)",
            f"{result['warmup_s']:.2f} / {result['first_step_s']:.2f} ({result['first_step_data_wait_s']:.2f})",
        ),
        (
            f"peak memory ({result['peak_memory_kind']}, GiB, per rank)",
            " / ".join(
                f"{b / GIB:.2f}" for b in result.get("peak_memory_bytes_per_rank") or [result["peak_memory_bytes"]]
            ),
        ),
        ("train GFLOPs per sample", f"{result['train_flops_per_sample'] / 1e9:.2f}"),
        ("achieved FLOP/s per rank", _flops_rate(result["achieved_tflops_per_rank"])),
        (
            "MFU (of bf16 dense peak)",
            "n/a (no GPU peak known)"
            if mfu is None
            else f"{100 * mfu:.1f}% of {result['peak_bf16_tflops']:.0f} TFLOP/s",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def print_overhead_result(result: dict, console: Console) -> None:
    """`bench train --plain-loop`: each round's two blocks and the trainer's overhead over the plain loop."""
    cfg = result["config"]
    table = Table(
        title=f"trainer step vs plain PyTorch loop: {cfg['model']['text']['name']} + {cfg['model']['image']['name']}, "
        f"batch {result['samples_per_step']}, {result['rounds']} rounds x {result['steps_per_block']} steps per side"
    )
    for column in ("round", "order", "trainer s", "plain s", "ratio"):
        table.add_column(column, justify="right")
    for i, r in enumerate(result["round_records"]):
        table.add_row(str(i), r["order"], f"{r['trainer_s']:.3f}", f"{r['plain_s']:.3f}", f"{r['ratio']:.4f}")
    console.print(table)
    console.print(
        f"overhead {100 * result['overhead']:+.2f}% (rounds: median {100 * result['overhead_median_round']:+.2f}%, "
        f"{100 * result['overhead_min_round']:+.2f}% .. {100 * result['overhead_max_round']:+.2f}%; of the median "
        f"steps {100 * result['overhead_of_medians']:+.2f}%); step ms median trainer "
        f"{1e3 * result['trainer_step_s_median']:.1f}, plain {1e3 * result['plain_step_s_median']:.1f}; load "
        f"{' '.join(f'{x:.2f}' for x in result['load_avg_before'])} -> "
        f"{' '.join(f'{x:.2f}' for x in result['load_avg_after'])} on {result['cpu_count']} cores",
        highlight=False,
    )


def _slow_steps(result: dict) -> str:
    if not result["slow_steps"]:
        return "0"
    return (
        f"{result['slow_steps']} ({result['slow_steps_first_seen_len']} at a new length; "
        f"{_ms(result['slow_steps_sync_s_mean'])} ms device wait)"
    )


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.1f}"


def _flops_rate(tflops: float) -> str:
    return f"{tflops:.1f} TFLOP/s" if tflops >= 1 else f"{1e3 * tflops:.1f} GFLOP/s"


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"


def summary_rows(results: list[dict]) -> list[dict]:
    """One flat row per result, for the combined table (README / device check)."""
    rows = []
    for r in results:
        label = r.get("label", "")
        if r["bench"] == "memory":
            rows.append(
                {
                    "run": f"{label} (largest batch {r['largest_batch']})",
                    "bench": "memory",
                    "samples/s": None,
                    "per worker": None,
                    "workers": "-",
                    "data wait": None,
                    "MFU": None,
                    "peak GiB": r["peak_memory_bytes"] / GIB,
                }
            )
        elif r["bench"] == "run":  # a scripted part of the device check (a whole `msa-dist train`, ...)
            rows.append(
                {
                    "run": f"{label}{_run_checks(r)}",
                    "bench": "run",
                    "samples/s": r.get("samples_per_s"),
                    "per worker": None,
                    "workers": "-",
                    "data wait": r.get("data_wait"),
                    "MFU": None,
                    "peak GiB": None,
                }
            )
        elif r["bench"] == "data":
            rows.append(
                {
                    "run": label,
                    "bench": "data",
                    "samples/s": r["samples_per_s"],
                    "per worker": r["samples_per_s_per_worker"],
                    "workers": r["workers"],
                    "data wait": None,
                    "MFU": None,
                    "peak GiB": None,
                }
            )
        else:
            rows.append(
                {
                    "run": label,
                    "bench": "train",
                    "samples/s": r["samples_per_s"],
                    "per worker": None,
                    "workers": r["config"]["data"]["workers"],
                    "data wait": r["data_wait_fraction"],
                    "MFU": r["mfu"],
                    "peak GiB": r["peak_memory_bytes"] / GIB,
                    "step": _step_cell(r),
                }
            )
    return rows


def _run_checks(result: dict) -> str:
    """A scripted part's yes/no checks and wall time, e.g. ' (losses_equal_after_resume: yes, wall_s: 812)'."""
    notes = [f"{k}: {'yes' if v else 'NO'}" for k, v in result.items() if isinstance(v, bool)]
    notes += [f"{k}: {result[k]}" for k in ("wall_s", "seconds") if k in result]
    return f" ({', '.join(notes)})" if notes else ""


def _step_cell(result: dict) -> str:
    """Median / p95 step in ms and the slow steps (how many met a new text length), for train rows."""
    if "step_s_p50" not in result:
        return "-"
    skipped = result.get("optimizer_steps_skipped")  # DeepSpeed's fp16 overflow skips
    return (
        f"{1e3 * result['step_s_p50']:.0f} / {1e3 * result['step_s_p95']:.0f} "
        f"({result['slow_steps']}, {result['slow_steps_first_seen_len']} new)"
        + (f", {skipped} steps skipped" if skipped else "")
    )


def summary_markdown(results: list[dict]) -> str:
    """The combined table as Markdown (what README's Performance section shows)."""

    def cell(value, fmt):
        return "-" if value is None else fmt.format(value)

    lines = [
        "| run | bench | samples/s | per worker core | workers | data wait | MFU | peak memory GiB "
        "| step ms p50 / p95 (slow, at a new length) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in summary_rows(results):
        rate = "-" if row["samples/s"] is None else _rate(row["samples/s"])
        lines.append(
            f"| {row['run']} | {row['bench']} | {rate} | "
            f"{cell(row['per worker'], '{:.0f}')} | "
            f"{row['workers']} | {cell(row['data wait'], '{:.1%}')} | {cell(row['MFU'], '{:.1%}')} | "
            f"{cell(row['peak GiB'], '{:.1f}')} | {row.get('step', '-')} |"
        )
    return "\n".join(lines)


def merge_results(paths: list[str], out: str | None) -> list[dict]:
    """Read result JSONs (label = file stem) and optionally write them as one JSON list."""
    results = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        result.setdefault("label", Path(path).stem)
        results.append(result)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"environment": environment(), "results": results}, indent=1) + "\n")
    return results
