"""The `msa-dist config` command: print the resolved config, or the reference of every key."""

from __future__ import annotations

import argparse


def add_config_parser(sub) -> None:
    """Register `msa-dist config show|reference`."""
    c = sub.add_parser("config", help="print the resolved config, or the reference of every key")
    c.set_defaults(handler="msa_dist.cli.config:run_config_command")
    c.add_argument(
        "action",
        choices=["show", "reference"],
        help="show: the config after the file and overrides; reference: every key as a markdown table",
    )
    c.add_argument("--config", default=None, help="a YAML config (default: the built-in defaults)")
    c.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. optim.lr=3e-4")


def run_config_command(args: argparse.Namespace) -> int:
    """Print YAML (show) or a markdown table (reference)."""
    import yaml

    from msa_dist.config.reference import describe_fields
    from msa_dist.config.schema import load_config, to_dict

    if args.action == "show":
        print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
    else:
        print("| key | default | meaning |\n|---|---|---|")
        for key, default, doc in describe_fields():
            print(f"| `{key}` | `{default}` | {doc} |")
    return 0
