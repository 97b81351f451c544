"""engine/checkpoint/remote.py and run/place.py on memory://: each rank's part, the commit marker
written last, a torn or altered upload never resumed from, and an upload that fails past its
attempts ("checkpoint at step N was not saved", then on or stop as configured)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import CheckpointConfig
from msa_dist.engine.checkpoint import remote
from msa_dist.engine.run.place import RunPlace
from msa_dist.engine.run.store import RunStore
from msa_dist.engine.runtime import DistEnv


@pytest.fixture
def store(request):
    return RunStore(f"memory://ckpt/{request.node.name}", attempts=2, pause_s=0)


def _step(root: Path, rank: int, step: int = 4) -> Path:
    """Rank `rank`'s part of a step, as files.save_checkpoint leaves it in that rank's scratch."""
    step_dir = root / f"rank{rank}" / "checkpoints" / f"step-{step:07d}"
    step_dir.mkdir(parents=True)
    torch.save({"w": torch.full((3,), float(rank))}, step_dir / f"rng-rank{rank}.pt")
    if rank == 0:
        (step_dir / "client.json").write_text(json.dumps({"train_state": {"step": step}}))
        (step_dir / "sub").mkdir()
        (step_dir / "sub" / "shard.pt").write_bytes(b"x" * 100)
    return step_dir


def _save(store, root: Path, step: int, keep_last: int = 10) -> None:
    for rank in (0, 1):
        remote.upload_part(store, _step(root, rank, step), rank)
    remote.commit(store, f"step-{step:07d}", 2, keep_last)


def test_each_rank_uploads_its_part_and_the_commit_lists_every_file(store, tmp_path):
    _save(store, tmp_path, 4)
    marker = json.loads(store.read("checkpoints/step-0000004/commit.json"))
    assert sorted(marker["files"]) == ["client.json", "rng-rank0.pt", "rng-rank1.pt", "sub/shard.pt"]
    assert marker["files"]["sub/shard.pt"]["size"] == 100
    assert store.read("checkpoints/latest") == b"step-0000004"
    step = remote.fetch_latest(store, tmp_path / "fresh" / "checkpoints")
    assert step == tmp_path / "fresh" / "checkpoints" / "step-0000004"
    assert sorted(remote.file_table(step)) == sorted(marker["files"])
    assert (step.parent / "latest").read_text() == "step-0000004"


def test_a_torn_upload_is_never_resumed_from(store, tmp_path):
    _save(store, tmp_path, 4)
    remote.upload_part(store, _step(tmp_path / "b", 0, 6), 0)  # killed before rank 1 and the commit
    store.write("checkpoints/latest", b"step-0000006")  # even if `latest` were ahead
    assert remote.fetch_latest(store, tmp_path / "fresh").name == "step-0000004"


@pytest.mark.parametrize("damage", ["truncated", "altered", "missing"])
def test_a_step_whose_objects_differ_from_its_commit_is_skipped(store, tmp_path, damage, caplog):
    _save(store, tmp_path, 4)
    _save(store, tmp_path / "b", 6)
    name = "checkpoints/step-0000006/sub/shard.pt"
    if damage == "truncated":
        store.write(name, b"x" * 50)
    elif damage == "altered":
        store.write(name, b"y" * 100)  # same size: caught by its sha256 after the download
    else:
        store.delete(name)
    step = remote.fetch_latest(store, tmp_path / "fresh")
    assert step.name == "step-0000004"
    assert "step-0000006 is not usable" in caplog.text
    assert not (tmp_path / "fresh" / "step-0000006").exists()


def test_steps_past_keep_last_are_deleted(store, tmp_path):
    for i, step in enumerate((2, 4, 6)):
        _save(store, tmp_path / str(i), step, keep_last=2)
    kept = [n for n in store.children("checkpoints") if n.startswith("step-") and store.sizes(f"checkpoints/{n}")]
    assert kept == ["step-0000004", "step-0000006"]


class FakeBackend:
    """One rank's view of the collectives: all_reduce_sum adds what the other ranks report."""

    def __init__(self, others_failed: float = 0.0):
        self.others_failed = others_failed

    def all_reduce_sum(self, tensor):
        return tensor + self.others_failed

    def barrier(self):
        pass


def _place(store, tmp_path, rank: int = 0, **cfg) -> RunPlace:
    env = DistEnv(rank=rank, local_rank=rank, world_size=2, device=torch.device("cpu"))
    return RunPlace(tmp_path, store, CheckpointConfig(**cfg), env)


def test_a_failed_upload_is_one_line_and_training_goes_on(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(store.fs, "put_file", lambda *a, **k: (_ for _ in ()).throw(OSError("connection reset")))
    place = _place(store, tmp_path)
    assert place.publish(FakeBackend(), _step(tmp_path, 0), 4, best=False) is False
    out = " ".join(capsys.readouterr().out.split())
    assert "checkpoint at step 4 was not saved to memory://ckpt/" in out and "connection reset" in out
    assert store.read("checkpoints/step-0000004/commit.json") is None


def test_a_failed_upload_stops_the_run_when_so_configured(store, tmp_path, monkeypatch):
    monkeypatch.setattr(store.fs, "put_file", lambda *a, **k: (_ for _ in ()).throw(OSError("connection reset")))
    place = _place(store, tmp_path, upload_failure="stop")
    with pytest.raises(MsaDistError, match=r"checkpoint at step 4 was not saved .*stopping") as err:
        place.publish(FakeBackend(), _step(tmp_path, 0), 4, best=False)
    assert "\n" not in str(err.value)


def test_no_commit_when_another_rank_failed(store, tmp_path):
    place = _place(store, tmp_path)
    assert place.publish(FakeBackend(others_failed=1.0), _step(tmp_path, 0), 4, best=False) is False
    assert store.read("checkpoints/step-0000004/commit.json") is None
    assert store.read("checkpoints/latest") is None


def test_a_deepspeed_step_uploaded_in_parts_is_vouched_for_whole(store, tmp_path, monkeypatch):
    """Each rank's scratch holds its own ZeRO shard only: rank 0 signs the whole folder from the
    commit's list, so the downloaded step verifies under this user's key (trust.py)."""
    from msa_dist.engine.checkpoint import trust

    monkeypatch.setenv("MSA_DIST_CONFIG_DIR", str(tmp_path / "key"))
    for rank in (0, 1):
        step_dir = _step(tmp_path, rank)
        (step_dir / "deepspeed").mkdir()
        (step_dir / "deepspeed" / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(b"z" * (10 + rank))
        remote.upload_part(store, step_dir, rank)
    remote.commit(store, "step-0000004", 2, keep_last=2)
    step = remote.fetch_latest(store, tmp_path / "fresh")
    assert trust.made_here(step, trust.FOLDER)
    (step / "deepspeed" / "zero_pp_rank_1_optim_states.pt").write_bytes(b"y" * 11)
    assert not trust.made_here(step, trust.FOLDER)
