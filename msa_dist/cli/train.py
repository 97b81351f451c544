"""The `msa-dist train` command: its options here, the work in trainer.py."""

from __future__ import annotations

import argparse


def add_train_parser(sub) -> None:
    """Register `msa-dist train` (imports nothing heavy: the CLI builds every parser at start)."""
    t = sub.add_parser("train", help="train a model")
    t.set_defaults(handler="msa_dist.cli.train:run_train_command")
    t.add_argument("--config", required=True, help="a YAML config, e.g. configs/cpu_small.yaml")
    t.add_argument(
        "--run-dir", default=None, help="where checkpoints, logs and run_info.json go (default: runs/<config name>)"
    )
    t.add_argument(
        "--scratch",
        default=None,
        help="with --run-dir on a store (s3://BUCKET/PREFIX): the local folder each rank works in "
        "(SCRATCH/msa-dist-rankR, emptied at start; default: a new temp folder)",
    )
    t.add_argument(
        "--resume",
        default=None,
        help="'auto' (the run's latest checkpoint) or a checkpoint dir; after a torchrun restart 'auto' is implied",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a run dir that holds one: delete its checkpoints, metrics, tokenizer "
        "and reports first (without it, such a run dir is refused)",
    )
    t.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="resume a DeepSpeed checkpoint that this user did not save on this machine (a run dir "
        "from elsewhere): DeepSpeed unpickles its files, which can run code (docs/security.md)",
    )
    t.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    t.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. optim.lr=3e-4")


def run_train_command(args: argparse.Namespace) -> int:
    """Load the config, train, and write the run's report (rank 0, a finished run)."""
    from msa_dist.cli.runs import default_run_dir
    from msa_dist.config.schema import load_config
    from msa_dist.engine.runtime import read_env
    from msa_dist.engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    run_dir = args.run_dir or default_run_dir(args.config)
    summary = train(
        cfg,
        run_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        trust_checkpoint=args.trust_checkpoint,
        scratch=args.scratch,
    )
    if read_env(cfg.backend.device).is_main and summary["status"] == "finished":
        from msa_dist.engine.run.place import upload_report
        from msa_dist.experiments.report import write_run_report

        write_run_report(summary["local_run_dir"])  # confusion_matrix.png, curves.png, report.md
        upload_report(run_dir, summary["local_run_dir"], cfg.checkpoint)  # a run dir on a store
    return 0 if summary["status"] in ("finished", "preempted") else 1
