"""`shards verify`: a shard set read again, tampering and wrong counts caught, a missing manifest explained."""

from __future__ import annotations

import json

import pytest

from msa_dist.common.errors import MsaDistError
from msa_dist.data.format.manifest import load_manifest, shard_urls
from msa_dist.data.verify import verify_shards


def test_verify_passes_and_catches_tampering(shard_dir):
    manifest = load_manifest(shard_dir)
    summary = verify_shards(shard_dir)
    total = sum(s["samples"] for s in manifest["splits"].values())
    assert summary["samples"] == total
    assert summary["shards"] == sum(len(s["shards"]) for s in manifest["splits"].values())
    victim = shard_dir / manifest["splits"]["train"]["shards"][1]["name"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(MsaDistError, match=f"shard .*{victim.name}.*sha256"):
        verify_shards(shard_dir)
    victim.unlink()
    with pytest.raises(MsaDistError, match=f"shard {victim.name} \\(train\\) is listed in the manifest but missing"):
        verify_shards(shard_dir)


def test_verify_catches_wrong_count(shard_dir):
    path = shard_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["splits"]["val"]["shards"][0]["samples"] += 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(MsaDistError, match="val-000000.tar: holds"):
        verify_shards(shard_dir)


def test_missing_manifest_is_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MsaDistError, match="no manifest.json at .*msa-dist shards build"):
        verify_shards(tmp_path / "empty")
    with pytest.raises(MsaDistError, match="does not exist"):
        shard_urls(tmp_path / "absent", "train")
