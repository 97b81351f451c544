"""run_info.json (engine/run/provenance.py): the commit, the versions, the shard set's manifest, each resume."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from run_utils import tiny_config

from msa_dist.engine.run.provenance import RUN_INFO, manifest_sha256
from msa_dist.engine.trainer import train


def test_run_info_names_commit_versions_and_manifest(shard_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(shard_dir, "train.epochs=1"), run)
    info = json.loads((run / RUN_INFO).read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert info["git"]["commit"] == head.stdout.strip() and isinstance(info["git"]["dirty"], bool)
    assert info["data"]["manifest_sha256"] == manifest_sha256(shard_dir) == manifest_sha256(f"file://{shard_dir}")
    assert info["data"]["shard_options"] == {"image_size": 0, "jpeg_quality": None}
    assert info["versions"]["torch"] and info["versions"]["python"] and "nccl" in info["versions"]
    assert info["world"]["world_size"] == 1 and info["hosts"] and info["command"]
    train(tiny_config(shard_dir, "train.epochs=2"), run, resume="auto")
    assert len(json.loads((run / RUN_INFO).read_text())["resumed"]) == 1
