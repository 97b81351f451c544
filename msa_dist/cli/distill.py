"""The `msa-dist distill` sub-command: its options, and the call into experiments/distill.py."""

from __future__ import annotations

import argparse


def add_distill_parser(sub) -> None:
    """Register `msa-dist distill` (imports nothing heavy: the CLI builds every parser at start)."""
    d = sub.add_parser(
        "distill",
        help="train a seed ensemble of teachers, then one student of the same recipe on their averaged "
        "probabilities (train.teacher); report them side by side (resumable)",
    )
    d.set_defaults(handler="msa_dist.cli.distill:run_distill_command")
    d.add_argument("--config", required=True, help="YAML config of teachers and student alike")
    d.add_argument(
        "--teacher-seeds",
        default="1,2,3",
        metavar="S1,S2,...",
        help="one teacher per seed (default %(default)s); the student trains with train.seed",
    )
    d.add_argument(
        "--folds",
        type=int,
        default=0,
        help="K > 0: per fold of `msa-dist cv` (teachers trained on the fold's training part), scored on "
        "each fold's held-out part; 0 (default): on data.shards' train split, scored on its val split",
    )
    d.add_argument("--fold-seed", type=int, default=0, help="with --folds: shuffles the pairs into folds, as in cv")
    d.add_argument(
        "--only-folds",
        default=None,
        metavar="F1,F2,...",
        help="with --folds: teachers and student of these folds only, e.g. 0,1",
    )
    d.add_argument("--run-dir", default=None, help="default: runs/<config name>-distill")
    d.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.distill_weight=0.7")


def run_distill_command(args: argparse.Namespace) -> int:
    """Load the config and run the distillation."""
    from msa_dist.cli.cv import _ints
    from msa_dist.cli.runs import default_run_dir
    from msa_dist.config.schema import load_config
    from msa_dist.experiments.distill import run_distill

    cfg = load_config(args.config, args.overrides)
    run_dir = args.run_dir or default_run_dir(args.config, "distill")
    seeds, only = _ints(args.teacher_seeds, "--teacher-seeds") or [], _ints(args.only_folds, "--only-folds")
    run_distill(cfg, run_dir, seeds, args.folds, args.fold_seed, only=only)
    return 0
