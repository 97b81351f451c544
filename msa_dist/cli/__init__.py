"""The `msa-dist` command: parse, build, run. User mistakes print one line, no traceback.

Every command is one module of this package (`cli/train.py`, `cli/shards.py`, ...) with its
parser and its runner; a parser names its runner as "module:function" (`handler`), imported only
when the command runs, so `msa-dist --help` starts without torch. A new command is a new module
here, registered in `_parser`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from msa_dist.cli.bench import add_bench_parser
from msa_dist.cli.config import add_config_parser
from msa_dist.cli.cv import add_cv_parser
from msa_dist.cli.demo import add_demo_parser
from msa_dist.cli.distill import add_distill_parser
from msa_dist.cli.evaluate import add_evaluate_parser
from msa_dist.cli.experiments import add_experiment_parsers, add_report_parser
from msa_dist.cli.export import add_export_parser
from msa_dist.cli.predict import add_predict_parser
from msa_dist.cli.search import add_search_parser
from msa_dist.cli.shards import add_shards_parser
from msa_dist.cli.train import add_train_parser
from msa_dist.common.errors import USER_OS_ERRORS, MsaDistError, user_message
from msa_dist.engine.group import process_group_scope


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msa-dist", description="Image-text sentiment training on one or many GPUs.")
    sub = p.add_subparsers(dest="command", required=True)
    add_shards_parser(sub)
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_predict_parser(sub)
    add_config_parser(sub)
    add_experiment_parsers(sub)
    add_cv_parser(sub)
    add_search_parser(sub)
    add_distill_parser(sub)
    add_report_parser(sub)
    add_demo_parser(sub)
    add_export_parser(sub)
    add_bench_parser(sub)
    return p


def _run(args: argparse.Namespace) -> int:
    """Import the command's runner and call it."""
    module, function = args.handler.split(":")
    return getattr(importlib.import_module(module), function)(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `msa-dist` and `python -m msa_dist`."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    # Overrides may come between options (`--config F a.b=1 --run-dir D`); the deepspeed
    # launcher adds --local_rank=N anywhere. Everything else unknown is an error.
    extras = [x for x in extras if not x.startswith(("--local_rank", "--local-rank"))]
    if extras and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extras):
        args.overrides = [*args.overrides, *extras]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        with process_group_scope():  # the one owner of the process group: left when the command ends
            return _run(args)
    except MsaDistError as exc:
        print(f"msa-dist: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `msa-dist config reference | head`: the reader has gone, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        return 141
    except OSError as exc:
        if exc.errno not in USER_OS_ERRORS:
            raise
        print(f"msa-dist: error: {exc.strerror}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("msa-dist: interrupted", file=sys.stderr)
        return 130
