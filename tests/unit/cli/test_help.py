"""`msa-dist ... --help` explains every command and option (`shards show`: tests/unit/data/test_show.py)."""

from __future__ import annotations

import argparse

from msa_dist.cli import _parser


def _undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    missing.append(f"{path} {name}")
                missing += _undocumented(sub, f"{path} {name}")
            continue
        if not (action.help or "").strip():
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


# cli/cv.py belongs to the cross-validation work (issue 15); its --config gets a
# sentence there. Drop the exemption once it has one.
PENDING = {"msa-dist cv --config"}


def test_every_command_and_option_has_help():
    assert [m for m in _undocumented(_parser(), "msa-dist") if m not in PENDING] == []
