"""The `msa-dist demo` command's options; demo.py runs it."""

from __future__ import annotations

import argparse


def add_demo_parser(sub) -> None:
    """Register `msa-dist demo` (imports nothing heavy)."""
    d = sub.add_parser("demo", help="the whole job on a built-in synthetic dataset, on the CPU")
    d.set_defaults(handler="msa_dist.cli.demo:run_demo_command")
    d.add_argument(
        "--out",
        default="msa-dist-demo",
        help="folder for the data, shards, run and predictions, all written afresh (default %(default)s)",
    )
    d.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.epochs=2")


def run_demo_command(args: argparse.Namespace) -> int:
    """Run the demo under --out."""
    from msa_dist.experiments.demo import run_demo

    run_demo(args.out, args.overrides)
    return 0
