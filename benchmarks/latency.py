"""The loader over HTTP with a per-request latency: msa-dist's `bench data` beside webdataset, same run.

    msa-dist shards build ../shared/data/mvsa --out /tmp/sh      # any shard set with a manifest
    python benchmarks/latency.py /tmp/sh [--latencies 0,10,50,100] [--seconds 20] [--workers 2] [--json out.json]

For each latency L, `msa-dist shards serve --latency-ms L` serves the shards (a separate process:
each answer waits L ms before its first byte, like an object store's time to first byte); then
- msa-dist: `msa-dist bench data --shards URL --workers W` (the training loader: ranged reads,
  read-ahead, per-sample decode + augmentation, batched tokenization), and
- webdataset: the same shards streamed whole (`wds.WebDataset(urls)`, one GET per shard through
  curl, shards shuffled and split over W DataLoader workers, a 500-sample shuffle buffer), each
  batch made by msa-dist's own BatchMaker (the same decode, crop and tokenizer), so that only the
  reading differs.
Both report samples/s after two warm-up batches, bytes and requests per sample, and the time to
the first batch (from opening the shard set; msa-dist's includes training its stand-in tokenizer
on the shard texts when the configured one is not available offline). The last line is a JSON
summary with the ratios, each measured in the same run (the machine may be shared: compare ratios).
`--latencies local,0,50` adds msa-dist reading the folder itself: the most a node-local cache of the
shards could give.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(shards: str, latency_ms: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "msa_dist",
            "shards",
            "serve",
            shards,
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):  # up to 30 s for the server to listen
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the shard server did not start")


def _msa_dist(url: str, workers: int, seconds: float, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "data.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "msa_dist",
                "bench",
                "data",
                "--shards",
                url,
                "--workers",
                str(workers),
                "--seconds",
                str(seconds),
                "--json",
                str(out),
                *overrides,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=REPO,
        )
        r = json.loads(out.read_text())
    return {
        "samples_per_s": r["samples_per_s"],
        "bytes_per_sample": r["bytes_read_per_sample"],
        "bytes_per_sample_read": r["bytes_per_sample_read"],
        "mean_sample_bytes": r["mean_sample_bytes"],
        "requests_per_sample": r["requests_per_sample"],
        "time_to_first_batch_s": r["time_to_first_batch_s"],
    }


def _webdataset(url: str, workers: int, seconds: float, overrides: list[str]) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--webdataset-child",
            url,
            "--workers",
            str(workers),
            "--seconds",
            str(seconds),
            *overrides,
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def webdataset_child(url: str, workers: int, seconds: float, overrides: list[str]) -> dict:
    """webdataset's loader over `url` (run in its own process); prints its result as JSON."""
    import torch
    import webdataset as wds

    from msa_dist.bench.build import bench_tokenizer
    from msa_dist.config.schema import load_config
    from msa_dist.data.loading.batching import BatchMaker
    from msa_dist.data.loading.reader import ShardSet

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    opened = time.perf_counter()
    cfg = load_config(None, [*overrides, f"data.shards={url}"])
    shard_set = ShardSet(url)
    entries = shard_set.shards("train")
    tokenizer = bench_tokenizer(cfg, url)
    batch = cfg.train.batch_size

    class Batches(torch.utils.data.IterableDataset):
        def __iter__(self):
            maker = BatchMaker(cfg.data, tokenizer, batch, True, cfg.train.seed, lambda exc: True)
            for epoch in range(10**6):
                urls = [f"{url}/{s['name']}" for s in entries]
                # one streaming GET per shard; shards split over the DataLoader's workers
                samples = wds.WebDataset(
                    urls,
                    shardshuffle=len(urls),
                    seed=epoch,
                    nodesplitter=None,
                    workersplitter=wds.split_by_worker,
                    empty_check=False,
                ).shuffle(500)
                raws: list = []
                for sample in samples:
                    raws.append(sample)
                    if len(raws) == batch:
                        made = maker.make(raws, epoch)
                        made.pop("block", None)
                        yield made
                        raws = []

    loader = torch.utils.data.DataLoader(
        Batches(), batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None
    )
    first = timed_from = None
    samples = batches = 0
    for batches, got in enumerate(loader, start=1):
        now = time.perf_counter()
        first = first if first is not None else now - opened
        if batches == 2:
            timed_from = now
        elif timed_from is not None:
            samples += len(got["keys"])
            if now - timed_from >= seconds:
                break
    rate = samples / (now - timed_from)
    tar_bytes = sum(s["bytes"] for s in entries)
    total = sum(int(s["samples"]) for s in entries)
    return {
        "samples_per_s": rate,
        "bytes_per_sample": tar_bytes / total,
        "requests_per_sample": len(entries) / total,
        "time_to_first_batch_s": first,
    }


def _mean(results: list[dict]) -> dict:
    """The mean of each measure over repeats, with the samples/s of each repeat."""
    mean = {key: sum(r[key] for r in results) / len(results) for key in results[0]}
    return {**mean, "samples_per_s_each": [r["samples_per_s"] for r in results]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("shards", help="a shard folder (served here over HTTP), or the URL in --webdataset-child mode")
    p.add_argument(
        "--latencies",
        default="0,10,50,100",
        help="per-request latencies in ms; `local`: the folder itself, no server (default %(default)s)",
    )
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per loader and latency")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, both loaders (default %(default)s)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each loader per latency, in A B B A order; the table gives their mean (default %(default)s)",
    )
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--webdataset-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="dotted config overrides for both, e.g. data.chunk_samples=16")
    args = p.parse_intermixed_args()
    if args.webdataset_child:
        print(json.dumps(webdataset_child(args.shards, args.workers, args.seconds, args.overrides)), flush=True)
        return
    rows = []
    for latency in args.latencies.split(","):
        if latency == "local":  # the folder itself, no server: what a node-local cache could reach at best
            rows.append(
                {"latency_ms": "local", "msa_dist": _msa_dist(args.shards, args.workers, args.seconds, args.overrides)}
            )
            print(json.dumps(rows[-1]), flush=True)
            continue
        server, url = _serve(args.shards, float(latency))
        runs: dict = {"msa_dist": [], "webdataset": []}
        try:
            for k in range(args.repeats):  # A B B A ...: drift on a shared machine hits both alike
                for name in ("msa_dist", "webdataset") if k % 2 == 0 else ("webdataset", "msa_dist"):
                    bench = _msa_dist if name == "msa_dist" else _webdataset
                    runs[name].append(bench(url, args.workers, args.seconds, args.overrides))
        finally:
            server.terminate()
            server.wait(timeout=30)
        row = {"latency_ms": float(latency), **{name: _mean(results) for name, results in runs.items()}}
        row["msa_dist_vs_webdataset"] = row["msa_dist"]["samples_per_s"] / row["webdataset"]["samples_per_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["latency_ms"] == 0.0), rows[0])["msa_dist"]["samples_per_s"]
    for row in rows:
        row["msa_dist_vs_0ms"] = row["msa_dist"]["samples_per_s"] / base
    summary = {
        "workers": args.workers,
        "seconds": args.seconds,
        "overrides": args.overrides,
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
