"""Single-process features checked on two CPU ranks (gloo): tracking on rank 0 only, the train step's host
reads under DDP, `msa-dist cv` under torchrun, and a sweep point restarted with its ranks.

Their single-process tests: tests/unit/engine/test_tracking.py, test_step.py, tests/unit/experiments/test_cv.py
and test_sweep.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dist_utils import check, records, run, torchrun_cmd, write_config
from run_utils import scalars

from msa_dist.config.schema import load_config
from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.engine.run.provenance import RUN_INFO

ENTRY = str(Path(__file__).parents[1] / "helpers" / "dist_entry.py")

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_ddp_run_tracks_on_rank_0_only_and_records_every_rank_host(shard_dir, tmp_path):
    from dist_utils import check, run, torchrun_cmd, write_config

    config = write_config(
        tmp_path / "c.yaml",
        shard_dir,
        "train.batch_size=2",
        "train.epochs=1",
        "data.workers=0",
        "log.report_to=[tensorboard]",
    )
    run_dir = tmp_path / "run"
    check(run(torchrun_cmd(["train", "--config", str(config), "--run-dir", str(run_dir), "backend.name=ddp"])))
    info = json.loads((run_dir / RUN_INFO).read_text())
    assert info["world"]["world_size"] == 2 and len(info["world"]["rank_hosts"]) == 2
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes
    series = scalars(run_dir / "tensorboard")
    assert [s for s, _ in series["train/loss"]] == [r["step"] for r in records(run_dir, "train")]


def test_ddp_training_reads_no_device_value_back_per_step(tmp_path):
    """2 CPU ranks, DDP, accumulation 2, a fused AdamW: counting every host read of a tensor
    (`.item()`, `bool()`, `float()`, `int()`, `.tolist()`) inside the loop, the only one left is the
    ledger reading each step's numbers from their host copy, one step late (on a GPU that copy is
    pinned memory the GPU filled long before). Hugging Face's 2D-mask check (`mask.all()`) would
    show up here as one read per forward."""
    raw = write_synthetic_dataset(tmp_path / "raw", n_labelled=120, n_test=4, image_px=32)
    build_shards(raw, tmp_path / "shards", val_fraction=0.2, seed=0, shard_size=40)
    config = write_config(
        tmp_path / "c.yaml",
        tmp_path / "shards",
        "train.epochs=2",
        "optim.fused=true",
        "train.grad_accum_steps=2",
        "log.every_steps=100",
    )
    reads = tmp_path / "reads"
    check(
        run(
            torchrun_cmd(
                [ENTRY, "train", "--config", str(config), "--run-dir", str(tmp_path / "run"), "backend.name=ddp"],
                module=None,
            ),
            timeout=300,
            MSA_TEST_HOST_READS=str(reads),
        )
    )
    step_file = Path(__file__).parents[2] / "msa_dist" / "engine" / "step.py"
    read_line = next(i for i, line in enumerate(step_file.read_text().splitlines(), 1) if ".tolist()" in line)
    for rank in (0, 1):
        counts = json.loads((reads / f"rank{rank}.json").read_text())
        assert counts.pop("micro_steps") == 12 and counts.pop("epochs") == 2
        assert counts == {f"step.py:{read_line}": 6}, counts  # one per optimizer step, nothing else
    assert len(records(tmp_path / "run", "eval")) == 2


def test_cv_under_torchrun_trains_every_fold_on_both_ranks(tmp_path, shard_dir):
    from dist_utils import check, run, torchrun_cmd, write_config

    config = write_config(tmp_path / "c.yaml", shard_dir, "train.epochs=1", "train.batch_size=2", "backend.name=ddp")
    result = check(
        run(torchrun_cmd(["cv", "--config", str(config), "--folds", "2", "--run-dir", str(tmp_path / "cv")]))
    )
    saved = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert saved["complete"] and [r["fold"] for r in saved["runs"]] == [0, 1]
    assert result.stdout.count("world: 2 rank(s)") == 2  # one DDP run per fold


def _restarted_point_rank(rank: int, port: int, run_dir: str, seen: dict) -> None:
    """One rank of a 2-rank job restarted by torchrun in the middle of a point."""
    import os
    import shutil
    import time

    import msa_dist.experiments.points as points

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    if rank == 0:  # a slow delete: without the barrier rank 1 trains among the stale files
        real_rmtree = shutil.rmtree
        points.shutil.rmtree = lambda path, **kw: (time.sleep(1.5), real_rmtree(path, **kw))
    cfg = load_config(overrides=["backend.device=cpu", "backend.name=ddp"])
    point = points.Point("p", cfg)

    def train_fn(cfg, point_dir):  # train() would resume from checkpoints/latest here
        seen[rank] = (Path(point_dir) / "checkpoints" / "latest").exists()
        return {"status": "preempted"}

    points.run_point(point, Path(run_dir), train_fn)
    import torch.distributed as dist

    dist.destroy_process_group()


def test_a_restarted_point_is_deleted_before_any_rank_trains_it(tmp_path):
    """Defect (a): rank 0 deletes an unfinished point directory; the other ranks wait for it."""
    import torch.multiprocessing as mp
    from dist_utils import free_port

    stale = tmp_path / "p" / "checkpoints"
    stale.mkdir(parents=True)
    (stale / "latest").write_text("step-0000004")
    seen = mp.Manager().dict()
    mp.spawn(_restarted_point_rank, args=(free_port(), str(tmp_path), seen), nprocs=2, join=True)
    assert dict(seen) == {0: False, 1: False}
