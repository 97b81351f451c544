"""The `msa-dist bench` subcommands: argument parsing here, the work in data.py / train.py."""

from __future__ import annotations

import argparse


def add_bench_parser(sub) -> None:
    """Register `bench data`, `train`, `memory`, `plan`, `replicate` and `summary` on the CLI's subparsers."""
    bench = sub.add_parser("bench", help="measure loader and training throughput")
    bench.set_defaults(handler="msa_dist.cli.bench:run_bench")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    _add_data(bsub)
    _add_train(bsub)
    _add_memory_and_replicate(bsub)
    _add_plan(bsub)
    _add_requests(bsub)
    g = bsub.add_parser("manifest", help="write a manifest of many shards (a binary shard table) and time opening it")
    g.add_argument("--out", required=True, help="the folder to write manifest.json and train.shards.bin into")
    g.add_argument("--shards", type=float, default=1e6, help="train shards (default %(default)g)")
    g.add_argument("--shard-samples", type=int, default=1000, help="samples per shard (default %(default)s)")
    g.add_argument("--sample-bytes", type=int, default=16384, help="mean sample size, for the shard sizes")
    g.add_argument("--json", default=None, help="write the result to this JSON file")
    s = bsub.add_parser("summary", help="one table (and Markdown) of several result JSON files")
    s.add_argument("results", nargs="+", help="result JSON files written by `bench data/train --json`")
    s.add_argument("--out", default=None, help="also write them together into this JSON file")


def _add_data(bsub) -> None:
    d = bsub.add_parser("data", help="samples/s per worker core that the training loader delivers")
    d.add_argument("--shards", required=True, help="a shard directory (msa-dist shards build)")
    d.add_argument("--split", default="train", help="the split to read (default %(default)s)")
    d.add_argument("--seconds", type=float, default=20.0, help="timed seconds after warm-up")
    d.add_argument("--workers", type=int, default=1, help="loader worker processes (0: this process)")
    d.add_argument(
        "--config",
        default=None,
        help="take the data and batch settings from this config (default: the schema's defaults)",
    )
    d.add_argument(
        "--reference",
        default=None,
        metavar="DATA_ROOT",
        help="also time the seed-style loader on this raw DATA_ROOT and print the ratio",
    )
    d.add_argument("--json", default=None, help="write the result to this JSON file")
    d.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.image_size=96")


def _add_train(bsub) -> None:
    t = bsub.add_parser("train", help="timed training steps: samples/s, tokens/s, data wait, memory, MFU")
    t.add_argument("--config", required=True, help="the YAML config to time (its data.shards must exist)")
    t.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    t.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    t.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="the GPU's dense bf16 peak for MFU when it is not in msa_dist.bench.flops",
    )
    t.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN time its convolution algorithms (the trainer does not set this yet)",
    )
    t.add_argument(
        "--profile",
        default="",
        metavar="FILE",
        help="also profile 3 more steps (torch.profiler) and write the top operators to FILE, then "
        "4 steps one by one (every second padded to a new text length): the slowest one's",
    )
    t.add_argument(
        "--plain-loop",
        action="store_true",
        help="time the trainer's step beside a plain PyTorch loop (same model, optimizer and batches), "
        "in alternating blocks of --steps steps; prints the trainer's overhead",
    )
    t.add_argument("--rounds", type=int, default=6, help="with --plain-loop: blocks of each side (default %(default)s)")
    t.add_argument("--json", default=None, help="write the result to this JSON file")
    t.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.shards=DIR backend.precision=bf16")


def _add_memory_and_replicate(bsub) -> None:
    m = bsub.add_parser("memory", help="the largest micro batch whose training step fits on the GPU")
    m.add_argument("--config", required=True, help="the YAML config (its data.shards: for a stand-in tokenizer)")
    m.add_argument("--start", type=int, default=64, help="the first batch tried; doubled until one fails")
    m.add_argument("--limit", type=int, default=65536, help="the largest batch tried")
    m.add_argument("--resolution", type=int, default=32, help="bisect until the gap is at most this")
    m.add_argument("--json", default=None, help="write the result to this JSON file")
    m.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.text.gradient_checkpointing=true")

    r = bsub.add_parser("replicate", help="a larger shard set made of copies of a small one (device checks)")
    r.add_argument("src", help="the shard directory to copy")
    r.add_argument("--out", required=True, help="the new shard directory")
    r.add_argument("--copies", type=int, default=10, help="copies of every split (default %(default)s)")


def _add_plan(bsub) -> None:
    p = bsub.add_parser(
        "plan", help="per-process memory and start-up, per-node request and byte rates at a scale (no data)"
    )
    p.add_argument("--samples", type=float, required=True, help="samples in the split, e.g. 1e9")
    p.add_argument("--shard-samples", type=int, default=1000, help="samples per shard (default %(default)s)")
    p.add_argument("--nodes", type=int, default=1, help="nodes")
    p.add_argument("--gpus", type=int, default=8, help="GPUs (ranks) per node")
    p.add_argument("--workers", type=int, default=8, help="loader workers per rank")
    p.add_argument("--latency-ms", type=float, default=30.0, help="the store's time to first byte per request")
    p.add_argument("--samples-per-s-per-gpu", type=float, default=3500.0, help="training rate of one GPU")
    p.add_argument("--chunk-samples", type=int, default=4, help="data.chunk_samples")
    p.add_argument("--read-mode", choices=["chunks", "blocks"], default="chunks", help="data.read_mode")
    p.add_argument("--block-bytes", type=int, default=4 << 20, help="data.block_bytes (blocks mode)")
    p.add_argument("--shuffle-buffer-samples", type=int, default=4096, help="data.shuffle_buffer_samples")
    p.add_argument(
        "--partitions", type=int, default=0, help="data.canonical_partitions (0: lcm(nodes x gpus, 8) x workers)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="micro batch per rank")
    p.add_argument("--sample-bytes", type=int, default=16384, help="mean sample size in the shards")
    p.add_argument("--no-manifest", action="store_true", help="skip parsing a synthetic manifest of that many shards")
    p.add_argument("--json", default=None, help="write the result to this JSON file")


def _add_requests(bsub) -> None:
    q = bsub.add_parser("requests", help="requests of one blocks-mode epoch over HTTP, counted, beside the plan")
    q.add_argument("shards", help="a local shard directory (served on 127.0.0.1 for the count)")
    q.add_argument("--world", type=int, default=1, help="ranks (each with data.workers loader workers)")
    q.add_argument("--batch-size", type=int, default=32, help="micro batch per rank")
    q.add_argument("--seed", type=int, default=0, help="the order's seed (default %(default)s)")
    q.add_argument("--index-cache-bytes", type=int, default=None, help="a smaller index cache (a split too large)")
    q.add_argument("--json", default=None, help="write the result to this JSON file")
    q.add_argument("overrides", nargs="*", help="dotted data overrides, e.g. data.block_bytes=1048576")


def _run_scale_bench(args: argparse.Namespace, console) -> None:
    """`bench requests` and `bench manifest` (docs/data-scale.md)."""
    from msa_dist.bench import report

    if args.bench_command == "requests":
        from msa_dist.bench.requests import print_requests, run_requests_bench
        from msa_dist.config.schema import load_config

        cfg = load_config(None, args.overrides)
        result = run_requests_bench(
            args.shards, cfg.data, args.world, args.batch_size, args.seed, args.index_cache_bytes
        )
        report.write_json(result, args.json)
        print_requests(result, console)
    else:
        from msa_dist.bench.manifest import print_manifest, run_manifest_bench

        result = run_manifest_bench(args.out, int(args.shards), args.shard_samples, args.sample_bytes)
        report.write_json(result, args.json)
        print_manifest(result, console)


def run_bench(args: argparse.Namespace) -> int:
    """Run one `msa-dist bench` subcommand."""
    import os

    # Benchmarks build random-weight models and never need the hub: don't wait on network retries.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from msa_dist.bench import report
    from msa_dist.common.display import console

    runners = {"data": _run_data, "train": _run_train, "memory": _run_memory, "plan": _run_plan}
    runners.update(requests=_run_scale_bench, manifest=_run_scale_bench, replicate=_run_replicate)
    runner = runners.get(args.bench_command)
    if runner is None:
        results = report.merge_results(args.results, args.out)
        print(report.summary_markdown(results))
    else:
        runner(args, console)
    return 0


def _run_data(args: argparse.Namespace, console) -> None:
    from msa_dist.bench import report
    from msa_dist.bench.data import run_data_bench
    from msa_dist.config.schema import load_config

    cfg = load_config(args.config, [*args.overrides, f"data.shards={args.shards}"])
    result = run_data_bench(cfg, args.split, args.seconds, args.workers, reference=args.reference)
    report.write_json(result, args.json)
    report.print_data_result(result, console)


def _run_train(args: argparse.Namespace, console) -> None:
    import os

    from msa_dist.bench import report
    from msa_dist.config.schema import load_config

    cfg = load_config(args.config, args.overrides)
    if args.plain_loop:
        from msa_dist.bench.overhead import run_overhead_bench

        result = run_overhead_bench(cfg, args.steps, args.rounds, args.warmup, args.profile)
        report.write_json(result, args.json)
        report.print_overhead_result(result, console)
        return
    from msa_dist.bench.train import run_train_bench

    result = run_train_bench(cfg, args.steps, args.warmup, args.peak_tflops, args.cudnn_benchmark, args.profile)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 writes (it holds every rank's peak)
        report.write_json(result, args.json)
    report.print_train_result(result, console)


def _run_memory(args: argparse.Namespace, console) -> None:
    from msa_dist.bench import report
    from msa_dist.bench.build import bench_tokenizer
    from msa_dist.bench.memory import run_memory_bench
    from msa_dist.config.schema import load_config

    cfg = load_config(args.config, args.overrides)
    result = run_memory_bench(cfg, bench_tokenizer(cfg, cfg.data.shards), args.start, args.limit, args.resolution)
    report.write_json(result, args.json)
    console.print(
        f"largest batch {result['largest_batch']} ({result['peak_memory_bytes'] / 2**30:.1f} GiB peak); "
        f"first failing {result['first_failing_batch']}; {len(result['tries'])} tries",
        highlight=False,
    )


def _run_plan(args: argparse.Namespace, console) -> None:
    from msa_dist.bench import report
    from msa_dist.bench.plan import print_plan, run_plan_bench

    blocks = None
    if args.read_mode != "chunks":
        blocks = {
            "block_bytes": args.block_bytes,
            "buffer_samples": args.shuffle_buffer_samples,
            "partitions": args.partitions,
        }
    result = run_plan_bench(
        int(args.samples),
        args.shard_samples,
        args.nodes,
        args.gpus,
        args.workers,
        args.latency_ms,
        args.samples_per_s_per_gpu,
        args.chunk_samples,
        args.batch_size,
        args.sample_bytes,
        manifest=not args.no_manifest,
        blocks=blocks,
    )
    report.write_json(result, args.json)
    print_plan(result, console)


def _run_replicate(args: argparse.Namespace, console) -> None:
    from msa_dist.bench.replicate import replicate_shards

    manifest = replicate_shards(args.src, args.out, args.copies)
    sizes = ", ".join(f"{split} {info['samples']}" for split, info in manifest["splits"].items())
    console.print(f"wrote {args.copies} copies of {args.src} into {args.out}: {sizes}", highlight=False)
