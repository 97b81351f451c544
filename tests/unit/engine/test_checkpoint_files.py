"""Checkpoint files (engine/checkpoint/files.py): `latest` after a save interrupted at any point."""

from __future__ import annotations

from msa_dist.engine.checkpoint import files as ckpt


def test_latest_checkpoint_survives_an_interrupted_save(tmp_path):
    """A save writes a temporary directory, renames it, then moves `latest`; client.json is last."""
    root = tmp_path / "checkpoints"
    for name in ("step-0000002", ".tmp-step-0000004"):
        (root / name).mkdir(parents=True)
    (root / "step-0000002" / "client.json").write_text("{}")
    (root / "latest").write_text("step-0000002")
    assert ckpt.latest_checkpoint(root) == root / "step-0000002"  # a kill while writing step 4
    # a kill while re-saving step 4 (e.g. at the epoch end after a step save): the old copy counts
    (root / ".old-step-0000004").mkdir()
    (root / ".old-step-0000004" / "client.json").write_text("{}")
    (root / "latest").write_text("step-0000004")
    assert ckpt.latest_checkpoint(root) == root / ".old-step-0000004"
