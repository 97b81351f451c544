"""The `msa-dist search` sub-command: its options, and the call into experiments/search.py."""

from __future__ import annotations

import argparse


def add_search_parser(sub) -> None:
    """Register `msa-dist search` (imports nothing heavy: the CLI builds every parser at start)."""
    se = sub.add_parser(
        "search",
        help="hyper-parameter search on Optuna (TPE, median/hyperband pruning; resumable study in the run dir)",
    )
    se.set_defaults(handler="msa_dist.cli.search:run_search_command")
    se.add_argument("--config", required=True, help="the YAML config every trial starts from")
    se.add_argument(
        "--space",
        required=True,
        metavar="FILE",
        help="YAML: dotted key -> {low, high[, log, step]} or {choices: [...]} (configs/search/*.yaml)",
    )
    se.add_argument("--trials", type=int, default=20, help="trials to finish or prune (default %(default)s)")
    se.add_argument("--run-dir", default=None, help="default: runs/<config name>-search")
    se.add_argument("--metric", default=None, help="accuracy | macro_f1 | weighted_f1 (default: train.best_metric)")
    se.add_argument(
        "--pruner",
        default="median",
        choices=("median", "hyperband", "none"),
        help="stops unpromising trials between epochs (or folds with --cv); default %(default)s",
    )
    se.add_argument(
        "--cv",
        type=int,
        default=0,
        metavar="K",
        help="score every trial by K-fold cross-validation (the folds' mean), pruned between folds",
    )
    se.add_argument("--seed", type=int, default=0, help="the TPE sampler's seed (default %(default)s)")
    se.add_argument("overrides", nargs="*", help="dotted config overrides applied to every trial")


def run_search_command(args: argparse.Namespace) -> int:
    """Run (or continue) the search and rank its trials."""
    from msa_dist.cli.runs import default_run_dir
    from msa_dist.common.errors import MsaDistError
    from msa_dist.config.schema import load_config
    from msa_dist.experiments.search import run_search
    from msa_dist.experiments.search_space import load_space

    try:
        import optuna  # noqa: F401
    except ImportError:
        raise MsaDistError("msa-dist search needs optuna: pip install 'msa-dist[search]'") from None
    cfg = load_config(args.config, args.overrides)
    run_dir = args.run_dir or default_run_dir(args.config, args.command)
    space = load_space(args.space, cfg)
    run_search(cfg, space, run_dir, args.trials, args.metric, args.pruner, args.cv, args.seed)
    return 0
