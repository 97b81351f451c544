"""A ZeRO checkpoint resumed on another number of ranks, through DeepSpeed's universal checkpoint.

A 2-rank ZeRO-1/2/3 run saves every 4 steps; cut back to its step 8 (as if the job had died
there), `--resume auto` on 1 rank converts that checkpoint (`ds_to_universal`) and goes on with
its Adam moments and step count. The global batch is kept (2 x 4 -> 1 x 4 x 2 accumulation) and
the epoch order does not depend on the layout, so every later loss is the uninterrupted run's
(fp32, within 1e-5). Fresh moments, or DeepSpeed's ZeRO-3 load without our repairs, miss that
(~1e-4). The text and head parts get different learning rates so that a group that lost its own
hyperparameters shows. About 100 s on 2 cores (each torchrun of 2 DeepSpeed ranks ~12 s).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from dist_utils import check, records, run, torchrun_cmd, train_losses, write_config

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import load_config
from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.engine import trainer
from msa_dist.engine.backends.universal import convert_to_universal

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# 96 train samples, global batch 8: 12 steps, checkpoints at 4, 8, 12.
OVERRIDES = (
    "model.modality=text",
    "train.batch_size=4",
    "train.global_batch_size=8",
    "train.epochs=1",
    "optim.lr=1e-3",
    "optim.text_lr=3e-3",
    "checkpoint.every_steps=4",
    "checkpoint.keep_last=5",
    "backend.name=deepspeed",
)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("universal")
    raw = write_synthetic_dataset(root / "raw", n_labelled=120, n_test=10, image_px=32)
    build_shards(raw, root / "shards", val_fraction=0.2, seed=0, shard_size=40)
    return write_config(root / "c.yaml", root / "shards", *OVERRIDES)


@pytest.fixture(scope="module")
def two_rank_run(config, tmp_path_factory):
    """The uninterrupted 2-rank run of a ZeRO stage (trained once per module)."""
    runs = {}

    def get(stage: int) -> Path:
        if stage not in runs:
            run_dir = tmp_path_factory.mktemp(f"zero{stage}") / "two"
            check(run(torchrun_cmd(_train_args(config, run_dir, stage))))
            assert sorted(train_losses(run_dir)) == list(range(1, 13))
            runs[stage] = run_dir
        return runs[stage]

    return get


def _train_args(config: Path, run_dir: Path, stage: int, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--run-dir", str(run_dir), f"backend.zero_stage={stage}", *extra]


def _one_rank(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "msa_dist", *args]


def _cut_back(source: Path, dest: Path, step: int) -> Path:
    """A copy of a run as if it had died right after saving `step`; returns that step directory."""
    shutil.copytree(source, dest)
    ckpt_root = dest / "checkpoints"
    for later in ckpt_root.glob("step-*"):
        if int(later.name.rsplit("-", 1)[1]) > step:
            shutil.rmtree(later)
    (ckpt_root / "latest").write_text(f"step-{step:07d}")
    return ckpt_root / f"step-{step:07d}"


def _adam_steps(step_dir: Path) -> set[int]:
    """The Adam step counts in a 1-rank ZeRO checkpoint (ZeRO-1/2 and ZeRO-3 nest them differently)."""
    saved = torch.load(
        step_dir / "deepspeed" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", map_location="cpu", weights_only=False
    )["optimizer_state_dict"]
    inner = saved.get("base_optimizer_state") or saved["optimizer_state_dict"]
    return {int(state["step"]) for state in inner["state"].values()}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_checkpoint_of_two_ranks_resumes_on_one_with_its_adam_state(config, two_rank_run, tmp_path, stage):
    two = two_rank_run(stage)
    one = tmp_path / "one"
    step8 = _cut_back(two, one, 8)
    check(run(_one_rank(_train_args(config, one, stage, "--resume", "auto"))))
    resumed = [r for r in records(one) if r["type"] == "resume"]
    assert [(r["from"], r["world_size"]) for r in resumed] == [("step-0000008", 1)]
    assert train_losses(one) == pytest.approx(train_losses(two), abs=1e-5) and len(train_losses(one)) == 12
    assert _adam_steps(one / "checkpoints" / "step-0000012") == {12}  # counted on from 8, not from 0
    # the converted copy sits in the step directory and is reused by a later resume
    log = step8 / "universal" / "conversion.log"
    assert log.is_file() and not (step8 / ".tmp-universal").exists()
    before = log.stat().st_mtime_ns
    assert convert_to_universal(step8, "deepspeed") == step8 / "universal" and log.stat().st_mtime_ns == before


def test_zero3_checkpoint_of_one_rank_resumes_on_two(config, tmp_path):
    one, grown = tmp_path / "one", tmp_path / "two"
    check(run(_one_rank(_train_args(config, one, 3))))
    _cut_back(one, grown, 8)
    check(run(torchrun_cmd(_train_args(config, grown, 3, "--resume", "auto"))))
    assert [r["world_size"] for r in records(grown) if r["type"] == "resume"] == [2]
    assert train_losses(grown) == pytest.approx(train_losses(one), abs=1e-5) and len(train_losses(grown)) == 12


def test_zero1_checkpoint_resumes_as_zero2_and_not_as_zero3(config, two_rank_run, tmp_path):
    """Stages 1 and 2 share DeepSpeed's file layout, so the universal copy crosses between them;
    ZeRO-3's does not (DeepSpeed finds no model-state files): one line naming the way out."""
    two = two_rank_run(1)
    as_zero2 = tmp_path / "as-zero2"
    _cut_back(two, as_zero2, 8)
    check(run(torchrun_cmd(_train_args(config, as_zero2, 2, "--resume", "auto"))))
    assert train_losses(as_zero2) == pytest.approx(train_losses(two), abs=1e-5)

    as_zero3 = tmp_path / "as-zero3"
    step8 = _cut_back(two, as_zero3, 8)
    with pytest.raises(MsaDistError) as refused:
        trainer.train(load_config(config, ["backend.zero_stage=3"]), as_zero3, resume="auto")
    error = str(refused.value)
    assert "\n" not in error and "between stages 1 and 2 only" in error
    assert f"train.init_from={step8 / 'model.pt'}" in error and not (step8 / "universal").exists()
