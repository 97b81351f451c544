"""`msa-dist ... --help` explains every command and option; `shards show` prints what was packed."""
from __future__ import annotations

import argparse

from msa_dist.cli import _parser, main
from msa_dist.data.show import show_samples
from msa_dist.common.labels import LABELS


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


def test_shards_show_prints_samples(shard_dir, raw_dataset, capsys):
    rows = show_samples(shard_dir, "test", n=2)
    assert len(rows) == 2 and all(r["label"] is None for r in rows)
    assert rows[0]["text"] == raw_dataset.texts[rows[0]["key"]] and rows[0]["image"] == "48x40"
    assert show_samples(f"file://{shard_dir}", "test", n=2) == rows  # a shard set given as a URL
    train_rows = show_samples(shard_dir, "train", n=100)
    assert len(train_rows) == sum(1 for _ in raw_dataset.labels) - 6  # 2 per class went to val
    assert all(r["label"] == raw_dataset.labels[r["key"]] and r["label"] in LABELS for r in train_rows)
    capsys.readouterr()
    assert main(["shards", "show", str(shard_dir), "--split", "val", "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "val: first 3 samples" in out and "48x40" in out
    assert main(["shards", "show", str(shard_dir), "--split", "nope"]) == 2
    assert "split 'nope' is not in" in capsys.readouterr().err
