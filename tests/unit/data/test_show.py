"""`shards show` (data/show.py): what was packed, from a folder or a URL, and the command's output."""

from __future__ import annotations

from msa_dist.cli import main
from msa_dist.common.labels import LABELS
from msa_dist.data.show import show_samples


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
