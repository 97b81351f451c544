"""The `msa-dist cv` sub-command: its options, and the call into experiments/cv.py."""

from __future__ import annotations

import argparse

from msa_dist.common.errors import MsaDistError


def add_cv_parser(sub) -> None:
    """Register `msa-dist cv` (imports nothing heavy: the CLI builds every parser at start)."""
    cv = sub.add_parser(
        "cv",
        help="stratified k-fold cross-validation over the labelled pairs (resumable), "
        "with the bag-of-words reference on the same folds",
    )
    cv.set_defaults(handler="msa_dist.cli.cv:run_cv_command")
    cv.add_argument("--config", required=True, help="YAML config; its data.shards (train + val) are folded")
    cv.add_argument("--folds", type=int, default=5, help="K (default %(default)s)")
    cv.add_argument(
        "--seeds",
        default=None,
        metavar="S1,S2,...",
        help="train every fold once per seed, e.g. 0,1,2 (default: train.seed)",
    )
    cv.add_argument("--fold-seed", type=int, default=0, help="shuffles the pairs into folds (recorded in folds.json)")
    cv.add_argument("--run-dir", default=None, help="default: runs/<config name>-cv")
    cv.add_argument(
        "--predict",
        default=None,
        metavar="CSV",
        help="also write guid,tag for the test split from the fold models' averaged probabilities",
    )
    cv.add_argument(
        "--adjust",
        action="store_true",
        help="with --predict: add per-class logit offsets tuned on the out-of-fold predictions",
    )
    cv.add_argument(
        "--only-folds",
        default=None,
        metavar="F1,F2,...",
        help="train and report only these folds, e.g. 0,1 (split one CV between processes or machines)",
    )
    cv.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.epochs=4")


def run_cv_command(args: argparse.Namespace) -> int:
    """Load the config and run the cross-validation."""
    from msa_dist.cli.runs import default_run_dir, local_run_dir
    from msa_dist.config.schema import load_config
    from msa_dist.experiments.cv import run_cv

    cfg = load_config(args.config, args.overrides)
    run_dir = local_run_dir(args.run_dir or default_run_dir(args.config, "cv"), "cv")
    only = _ints(args.only_folds, "--only-folds")
    run_cv(cfg, run_dir, args.folds, _ints(args.seeds, "--seeds"), args.fold_seed, args.predict, args.adjust, only=only)
    return 0


def _ints(text: str | None, option: str) -> list[int] | None:
    """'0,1,2' -> [0, 1, 2]."""
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise MsaDistError(f"{option} takes integers separated by commas, e.g. 0,1,2; got {text!r}") from None
