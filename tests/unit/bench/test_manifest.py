"""bench/manifest.py: a manifest of many shards written as a shard table opens in a fresh process with the
split's counts and names (small scale here; docs/data-scale.md has 10^6 shards)."""

from __future__ import annotations

from msa_dist.bench.manifest import run_manifest_bench


def test_a_written_table_manifest_opens_with_every_shard(tmp_path):
    got = run_manifest_bench(str(tmp_path), shards=2000, shard_samples=7, sample_bytes=100)
    assert got["samples"] == 14000
    index = {"at": 32 + 32, "record": 52, "fields": ["cls", "jpg", "txt"]}  # 17 + 12 bytes of names: 32 padded
    assert got["middle_entry"] == {"name": "train-0001000.tar", "samples": 7, "bytes": 1724, "index": index}
    assert got["table_bytes"] == 24 + 2000 * (12 + 17 + 6 + 32)
