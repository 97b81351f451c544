"""FSDP2 (backend.name=fsdp) on 2 CPU ranks (gloo): exact mid-epoch resume, and DCP's resharding
of a 2-rank checkpoint onto 1 rank.

One 2-rank run (bf16 through FSDP's MixedPrecisionPolicy, an EMA of the weights, both
modalities; 96 train samples, global batch 8: 12 steps, checkpoints at 4, 8, 12) is cut back to
its step 8, as if the job had died there, and resumed with `--resume auto`: on 2 ranks every
later loss and the final weights are the uninterrupted run's bit for bit; on 1 rank (4 x 2
accumulation: the same global batch, and the epoch order does not depend on the layout) the
losses are too, from model, Adam and EMA state resharded by DCP. Each torchrun ~15 s on 2 quiet cores.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from dist_utils import check, final_weights, records, run, torchrun_cmd, train_losses, write_config

from msa_dist import load_model
from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import load_config
from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.engine import trainer
from msa_dist.engine.backends import saved_format
from msa_dist.engine.checkpoint.checkpointer import resume_point
from msa_dist.inference.export import export_run

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

OVERRIDES = (
    "train.batch_size=4",
    "train.global_batch_size=8",
    "train.epochs=1",
    "train.ema_decay=0.9",
    "checkpoint.every_steps=4",
    "checkpoint.keep_last=5",
    "backend.name=fsdp",
    "backend.precision=bf16",
)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsdp")
    raw = write_synthetic_dataset(root / "raw", n_labelled=120, n_test=10, image_px=32)
    build_shards(raw, root / "shards", val_fraction=0.2, seed=0, shard_size=40)
    return write_config(root / "c.yaml", root / "shards", *OVERRIDES)


@pytest.fixture(scope="module")
def two_rank_run(config, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank run."""
    run_dir = tmp_path_factory.mktemp("two") / "run"
    check(run(torchrun_cmd(_train_args(config, run_dir))))
    assert sorted(train_losses(run_dir)) == list(range(1, 13))
    return run_dir


def _train_args(config: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--run-dir", str(run_dir), *extra]


def _cut_back(source: Path, dest: Path, step: int) -> Path:
    """A copy of a run as if it had died right after saving `step`; returns that step directory."""
    shutil.copytree(source, dest)
    ckpt_root = dest / "checkpoints"
    for later in ckpt_root.glob("step-*"):
        if int(later.name.rsplit("-", 1)[1]) > step:
            shutil.rmtree(later)
    (ckpt_root / "latest").write_text(f"step-{step:07d}")
    return ckpt_root / f"step-{step:07d}"


def test_fsdp_resumes_mid_epoch_exactly_and_its_run_dir_exports(two_rank_run, config, tmp_path):
    resumed = tmp_path / "resumed"
    step8 = _cut_back(two_rank_run, resumed, 8)
    assert saved_format(step8) == "fsdp" and (step8 / "fsdp" / ".metadata").is_file()
    assert (step8 / "trust.json").is_file()  # DCP unpickles its index: vouched for, as DeepSpeed's files
    check(run(torchrun_cmd(_train_args(config, resumed, "--resume", "auto"))))
    assert [(r["from"], r["world_size"]) for r in records(resumed, "resume")] == [("step-0000008", 2)]
    assert train_losses(resumed) == train_losses(two_rank_run)
    a, b = final_weights(two_rank_run), final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype != torch.bfloat16 for v in a.values())  # model.pt: the fp32 weights, consolidated
    # export and load_model read the consolidated model.pt, with no process group
    predictor = load_model(export_run(two_rank_run, tmp_path / "export"))
    assert predictor is not None and load_model(two_rank_run) is not None


def test_fsdp_checkpoint_of_two_ranks_resumes_on_one_through_dcp_resharding(two_rank_run, config, tmp_path):
    one = tmp_path / "one"
    _cut_back(two_rank_run, one, 8)
    check(run(torchrun_cmd(_train_args(config, one, "--resume", "auto"), nproc=1)))
    assert [r["world_size"] for r in records(one, "resume")] == [1]
    assert train_losses(one) == pytest.approx(train_losses(two_rank_run), abs=1e-5) and len(train_losses(one)) == 12


def test_fsdp_checkpoint_refuses_another_backend_and_an_unvouched_index(two_rank_run, config, tmp_path):
    other = tmp_path / "other"
    step8 = _cut_back(two_rank_run, other, 8)
    with pytest.raises(MsaDistError) as refused:
        trainer.train(load_config(config, ["backend.name=ddp"]), other, resume="auto")
    assert "\n" not in str(refused.value) and "written by backend.name=fsdp" in str(refused.value)
    (step8 / "trust.json").unlink()  # as if the run dir had been downloaded
    with pytest.raises(MsaDistError, match="torch.distributed.checkpoint unpickles its files"):
        resume_point(other / "checkpoints", str(step8))
