"""The `msa-dist ablate`, `sweep` and `report` commands: their options here, the work in
ablate.py, sweep.py and report.py (`cv` is cli/cv.py)."""

from __future__ import annotations

import argparse


def add_experiment_parsers(sub) -> None:
    """Register `ablate`, `sweep` and `report` (imports nothing heavy)."""
    ab = sub.add_parser("ablate", help="train text-only, image-only and both; tabulate their val metrics")
    ab.set_defaults(handler="msa_dist.cli.experiments:run_ablate_command")
    ab.add_argument("--config", required=True, help="the YAML config every variant starts from")
    ab.add_argument("--run-dir", default=None, help="default: runs/<config name>-ablate")
    ab.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.epochs=4")

    sw = sub.add_parser("sweep", help="train every combination of --grid values (resumable), ranked by a val metric")
    sw.set_defaults(handler="msa_dist.cli.experiments:run_sweep_command")
    sw.add_argument("--config", required=True, help="the YAML config every point starts from")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="repeat for more keys")
    sw.add_argument("--run-dir", default=None, help="default: runs/<config name>-sweep")
    sw.add_argument("--metric", default=None, help="accuracy | macro_f1 | weighted_f1 (default: train.best_metric)")
    sw.add_argument(
        "--cv",
        type=int,
        default=0,
        metavar="K",
        help="score every point by K-fold cross-validation (its mean) instead of the val split",
    )
    sw.add_argument("overrides", nargs="*", help="dotted config overrides applied to every point")


def add_report_parser(sub) -> None:
    """Register `msa-dist report`."""
    rp = sub.add_parser("report", help="compare runs side by side (and write each run's plots and report.md)")
    rp.set_defaults(handler="msa_dist.cli.experiments:run_report_command")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs, or ablation/sweep dirs holding runs")
    rp.add_argument("--out", default="comparison.md", help="the markdown file to write")


def _config_and_dir(args: argparse.Namespace):
    from msa_dist.cli.runs import default_run_dir, local_run_dir
    from msa_dist.config.schema import load_config

    cfg = load_config(args.config, args.overrides)
    return cfg, local_run_dir(args.run_dir or default_run_dir(args.config, args.command), args.command)


def run_ablate_command(args: argparse.Namespace) -> int:
    """Train the three modality variants and tabulate them."""
    from msa_dist.experiments.ablate import run_ablation

    run_ablation(*_config_and_dir(args))
    return 0


def run_sweep_command(args: argparse.Namespace) -> int:
    """Train the grid's points and rank them."""
    from msa_dist.experiments.sweep import parse_grid, run_sweep

    cfg, run_dir = _config_and_dir(args)
    run_sweep(cfg, parse_grid(args.grid), run_dir, args.metric, cv_folds=args.cv)
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    """Write the comparison of the given runs."""
    from msa_dist.experiments.report import compare_runs

    compare_runs(args.run_dirs, args.out)
    return 0
