"""The `msa-dist evaluate` command: its options here, the work in inference.py."""

from __future__ import annotations

import argparse


def add_evaluate_parser(sub) -> None:
    """Register `msa-dist evaluate` (imports nothing heavy)."""
    e = sub.add_parser("evaluate", help="metrics of a trained run on a labelled split")
    e.set_defaults(handler="msa_dist.cli.evaluate:run_evaluate_command")
    e.add_argument("--run", required=True, help="the --run-dir of a `msa-dist train`")
    e.add_argument("--shards", default=None, help="shard folder to read (default: the run's data.shards)")
    e.add_argument("--split", default="val", help="a labelled split of the shards (default %(default)s)")
    e.add_argument("--checkpoint", default="best", help="best | latest | step-NNNNNNN")
    e.add_argument("--adjust", action="store_true", help="add the per-class logit offsets tuned on val for macro-F1")
    e.add_argument(
        "--hflip", action="store_true", help="test-time flips: average the logits of each image and its mirror"
    )


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Evaluate and print the metrics table."""
    from msa_dist.common.display import print_metrics
    from msa_dist.inference.evaluate import evaluate, run_shards

    shards = run_shards(args.run, args.shards)
    metrics = evaluate(args.run, shards, args.split, args.checkpoint, adjust=args.adjust, hflip=args.hflip)
    adjusted = ", logit offsets tuned on val" if args.adjust else ", flipped images averaged in" if args.hflip else ""
    print_metrics(metrics, f"{args.split} metrics ({args.checkpoint} checkpoint of {args.run}{adjusted})")
    return 0
