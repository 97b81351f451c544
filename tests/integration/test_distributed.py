"""Multi-process training on the CPU: DDP and DeepSpeed under torchrun (gloo), checkpoints, faults.

Every torchrun here starts 2 ranks with a tiny model on 32 px images; a test fails (instead of
hanging CI) when a run outlives its timeout, and a hung run prints its ranks' stacks.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from dist_entry import nan_loss_builder
from dist_utils import (
    check,
    final_weights,
    finish,
    rank_pids,
    records,
    run,
    start,
    torchrun_cmd,
    train_losses,
    wait_for,
    write_config,
)

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import load_config
from msa_dist.data.loading.loader import StreamSpec, iter_texts
from msa_dist.data.loading.stream import TrainStream
from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.engine import trainer
from msa_dist.inference.evaluate import evaluate, predict
from msa_dist.models.tokenizer import train_wordpiece_tokenizer

ENTRY = str(Path(__file__).parents[1] / "helpers" / "dist_entry.py")
N_TEST = 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A learnable synthetic set: 96 train pairs in uneven shards (40, 40, 16), 24 val, 10 test."""
    root = tmp_path_factory.mktemp("dist")
    raw = write_synthetic_dataset(root / "raw", n_labelled=120, n_test=N_TEST, image_px=32)
    build_shards(raw, root / "shards", val_fraction=0.2, seed=0, shard_size=40)
    build_shards(raw, root / "one-shard", val_fraction=0.2, seed=0, shard_size=1000)
    return root


def _train_args(config: Path, run_dir: Path, *overrides: str) -> list[str]:
    return ["train", "--config", str(config), "--run-dir", str(run_dir), *overrides]


def _predict_rows(run_dir: Path, shards: Path, out: Path) -> list[list[str]]:
    assert predict(str(run_dir), str(shards), str(out)) == N_TEST
    return list(csv.reader(out.open()))


# -- data on many ranks ---------------------------------------------------------------------------


def test_one_shard_with_two_ranks_and_two_workers_reads_every_sample_once(data):
    """Our loader deals samples, not shards: 1 shard < 2 ranks x 2 workers is fine."""
    cfg = load_config(base={"data": {"image_size": 32, "resize_size": 32, "workers": 2}})
    tok = train_wordpiece_tokenizer(iter_texts(str(data / "one-shard")), 100)
    per_rank = []
    for rank in range(2):
        spec = StreamSpec("train", True, 8, rank=rank, world_size=2, seed=0, epoch=1)
        stream = TrainStream(cfg.data, str(data / "one-shard"), spec, tok, epochs=2)
        stream.load_state_dict({**stream.state_dict(), "epoch": 1})
        per_rank.append([k for batch in stream.epoch(1) for k in batch["keys"]])
        stream.close()
    assert len(per_rank[0]) == len(per_rank[1]) == 48  # equal step counts: 6 batches of 8 each
    assert not set(per_rank[0]) & set(per_rank[1])
    manifest = json.loads((data / "one-shard" / "manifest.json").read_text())
    assert sorted(per_rank[0] + per_rank[1]) == sorted(manifest["splits"]["train"]["guids"])


# -- exact resume and non-finite losses, in this process ----------------------------------------


def _teacher_file(shards: Path, path: Path) -> str:
    """A random teacher over the train split's guids, as a `train.teacher=` override."""
    from msa_dist.engine.teacher import write_teacher_file

    guids = json.loads((shards / "manifest.json").read_text())["splits"]["train"]["guids"]
    probs = torch.softmax(torch.randn(len(guids), 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    write_teacher_file(path, guids, probs, {})
    return f"train.teacher={path}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [(), ("train.ema_decay=0.9", "train.mixup_alpha=0.4"), ("teacher", "train.mixup_alpha=0.4")],
    ids=["plain", "ema-mixup", "teacher-mixup"],
)
def test_resume_mid_epoch_is_exact(data, tmp_path, extra):
    """Dropout on, 2 workers, a shuffle buffer: resuming from a mid-epoch checkpoint reproduces
    every later loss and the final weights bit for bit (CPU, fp32, fixed seed); with an EMA of the
    weights and mixup too (the trained weights travel in the client state, mixup's draws in the RNG's);
    with a teacher file (train.teacher) and mixup, whose permutation moves the teacher's rows too."""
    extra = [_teacher_file(data / "shards", tmp_path / "teacher.json") if x == "teacher" else x for x in extra]
    config = write_config(
        tmp_path / "c.yaml",
        data / "shards",
        "data.workers=2",
        "model.text.tiny_dropout=0.1",
        "model.head.dropout=0.2",
        "checkpoint.every_steps=5",
        "checkpoint.keep_last=10",
        *extra,
    )
    cfg = load_config(config)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    trainer.train(cfg, whole)
    shutil.copytree(whole, resumed)
    mid = resumed / "checkpoints" / "step-0000015"  # 12 steps per epoch: in the middle of epoch 2
    assert json.loads((mid / "client.json").read_text())["data"]["samples_done"] == 3 * 8
    trainer.train(cfg, resumed, resume=str(mid))
    assert train_losses(resumed) == train_losses(whole) and len(train_losses(whole)) == 24
    assert [r["type"] for r in records(resumed)].count("resume") == 1
    a, b = final_weights(whole), final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_nonfinite_losses_are_skipped_and_counted_then_stop_the_run(data, tmp_path, monkeypatch):
    config = write_config(tmp_path / "c.yaml", data / "shards", "train.epochs=1", "train.max_nonfinite_steps=3")
    monkeypatch.setattr(trainer, "build_loss", nan_loss_builder({2, 5, 6}))
    summary = trainer.train(load_config(config), tmp_path / "skips")
    assert summary["status"] == "finished" and summary["nonfinite_total"] == 3
    assert [r["loss"] is None for r in records(tmp_path / "skips", "train")][:6] == [
        False,
        True,
        False,
        False,
        True,
        True,
    ]
    monkeypatch.setattr(trainer, "build_loss", nan_loss_builder(set(range(3, 100))))
    with pytest.raises(MsaDistError, match="3 non-finite losses in a row"):
        trainer.train(load_config(config), tmp_path / "stops")


# -- DDP ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_matches_one_process_and_resumes_after_a_killed_rank(data, tmp_path):
    """2 ranks x batch 4 == 1 process x batch 8 (fp32; losses within 1e-5, weights within 1e-4).
    Uneven shards: both ranks run all 12 steps. SIGKILL of rank 1 under torchrun --max-restarts 1:
    the group restarts, resumes from `latest` by itself and ends exactly as the uninterrupted run."""
    # text only, no dropout: per-rank BatchNorm statistics and dropout masks differ from one big batch
    config = write_config(
        tmp_path / "c.yaml",
        data / "shards",
        "model.modality=text",
        "train.batch_size=4",
        "train.epochs=1",
        "checkpoint.every_steps=2",
        "checkpoint.keep_last=3",
    )
    ddp, one, killed = tmp_path / "ddp", tmp_path / "one", tmp_path / "killed"
    check(run(torchrun_cmd(_train_args(config, ddp, "backend.name=ddp"))))
    losses = train_losses(ddp)
    assert sorted(losses) == list(range(1, 13))  # 12 steps on every rank, no hang

    # One process, the same global batch. The runs share the tokenizer: WordPiece training does
    # not give the same vocabulary order in every process.
    for other in (one, killed):
        shutil.copytree(ddp / "tokenizer", other / "tokenizer")
    trainer.train(load_config(config, ["train.batch_size=8"]), one)
    assert losses == pytest.approx(train_losses(one), abs=1e-5)
    a, b = final_weights(ddp), final_weights(one)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    # validation split across 2 ranks and reduced == one process on the same weights
    ddp_eval = records(ddp, "eval")[-1]
    solo = evaluate(str(ddp), str(data / "shards"), "val", which="latest")
    assert (ddp_eval["samples"], ddp_eval["confusion_matrix"]) == (24, solo["confusion_matrix"])

    # Another world size, mid-epoch: 2 ranks x batch 4 saved at step 10 of 12, resumed on 1 rank x
    # batch 8 (the same global batch): the epoch order does not depend on the layout, so the last
    # steps train on the same samples and give the 2-rank run's losses.
    other = tmp_path / "one-rank"
    shutil.copytree(ddp, other)
    summary = trainer.train(
        load_config(config, ["train.batch_size=8"]), other, resume=str(other / "checkpoints" / "step-0000010")
    )
    assert summary["status"] == "finished" and summary["step"] == 12
    assert train_losses(other) == pytest.approx(losses, abs=1e-5) and len(train_losses(other)) == 12
    # ... and 1 -> 2: the one-process run, resumed at its step 10 on 2 ranks x batch 4
    grown = tmp_path / "two-ranks"
    shutil.copytree(one, grown)
    check(
        run(
            torchrun_cmd(
                _train_args(config, grown, "backend.name=ddp", "--resume", str(grown / "checkpoints" / "step-0000010"))
            )
        )
    )
    assert train_losses(grown) == pytest.approx(train_losses(one), abs=1e-5) and len(train_losses(grown)) == 12

    log = tmp_path / "killed.log"
    proc = start(torchrun_cmd(_train_args(config, killed, "backend.name=ddp"), max_restarts=1), log)
    wait_for(lambda: (killed / "checkpoints" / "latest").is_file(), proc)
    pids = rank_pids(proc.pid)
    assert set(pids) == {0, 1}, pids
    os.kill(pids[1], signal.SIGKILL)
    assert finish(proc, log) == 0, log.read_text()[-4000:]
    assert [r["type"] for r in records(killed)].count("resume") == 1
    assert train_losses(killed) == losses
    a, b = final_weights(ddp), final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_bf16_resnet_sigterm_saves_then_resumes_and_predicts(data, tmp_path):
    """bf16 autocast with ResNet's BatchNorm; SIGTERM (as SLURM preempts) to torchrun saves a
    checkpoint on every rank at the next step boundary; --resume auto finishes the run. A NaN
    loss on rank 1 at an accumulation boundary is skipped on both ranks, which stay identical."""
    config = write_config(
        tmp_path / "c.yaml",
        data / "shards",
        "backend.precision=bf16",
        "model.image.name=resnet18",
        "train.grad_accum_steps=2",
    )
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    cmd = torchrun_cmd(["train", "--config", str(config), "--run-dir", str(run_dir), "backend.name=ddp"], module=None)
    proc = start(
        cmd[: cmd.index("train")] + [ENTRY] + cmd[cmd.index("train") :],
        log,
        MSA_TEST_NAN_CALLS="4",
        MSA_TEST_NAN_RANK="1",
    )
    wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and records(run_dir, "train"), proc)
    proc.send_signal(signal.SIGTERM)
    finish(proc, log)  # torchrun itself exits non-zero after a SIGTERM; its ranks exit cleanly
    assert "SIGTERM: saved a checkpoint" in log.read_text(), log.read_text()[-4000:]
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    assert {p.name for p in ckpt.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
    saved_step = json.loads((ckpt / "client.json").read_text())["train_state"]["step"]
    assert 0 < saved_step < 6

    resumed = run(
        torchrun_cmd(
            [
                ENTRY,
                "train",
                "--config",
                str(config),
                "--run-dir",
                str(run_dir),
                "backend.name=ddp",
                "--resume",
                "auto",
            ],
            module=None,
        ),
        MSA_TEST_NAN_CALLS="4",
        MSA_TEST_NAN_RANK="1",
    )
    check(resumed)
    assert f"step {saved_step}" in resumed.stdout
    steps = [r["step"] for r in records(run_dir, "train")]
    assert steps == list(range(1, 7))  # 3 steps per epoch x 2, each logged once
    assert records(run_dir, "train")[-1]["nonfinite_total"] >= 1
    final = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    r0, r1 = torch.load(final / "model-rank0.pt"), torch.load(final / "model-rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    rows = _predict_rows(run_dir, data / "shards", tmp_path / "pred.csv")
    assert rows[0] == ["guid", "tag"] and len(rows) == N_TEST + 1


# -- DeepSpeed ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.distributed
def test_deepspeed_zero2_trains_predicts_and_refuses_a_zero3_resume(data, tmp_path):
    config = write_config(tmp_path / "c.yaml", data / "shards", "train.epochs=1")
    run_dir = tmp_path / "run"
    # a NaN loss on rank 1 at its 2nd micro batch: with no accumulation, a whole step is skipped
    check(
        run(
            torchrun_cmd(
                [ENTRY, *_train_args(config, run_dir, "backend.name=deepspeed", "backend.zero_stage=2")], module=None
            ),
            MSA_TEST_NAN_CALLS="2",
            MSA_TEST_NAN_RANK="1",
        )
    )
    train = records(run_dir, "train")
    assert len(train) == 6 and train[1]["loss"] is None and train[-1]["nonfinite_total"] == 1
    step = run_dir / "checkpoints" / "step-0000006"
    ds = json.loads((step / "deepspeed_config.json").read_text())
    assert (ds["zero_optimization"]["stage"], ds["train_batch_size"]) == (2, 16)
    r0, r1 = torch.load(step / "model-rank0.pt"), torch.load(step / "model-rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    rows = _predict_rows(run_dir, data / "shards", tmp_path / "pred.csv")
    assert len(rows) == N_TEST + 1
    # the val metrics of the run (2 ranks) are those of its model.pt in one process
    solo = evaluate(str(run_dir), str(data / "shards"), "val", which="latest")
    assert records(run_dir, "eval")[-1]["confusion_matrix"] == solo["confusion_matrix"]

    # ZeRO-3 cannot take over a ZeRO-2 state (another world size can: tests/integration/test_zero_universal.py):
    # one line that names the way out ...
    ds_cfg = load_config(config, ["backend.name=deepspeed", "backend.zero_stage=3"])
    with pytest.raises(MsaDistError) as refused:
        trainer.train(ds_cfg, run_dir, resume="auto")
    error = str(refused.value)
    assert "\n" not in error and "stages 1 and 2 only" in error and f"train.init_from={step / 'model.pt'}" in error
    # ... which works: a new run from the consolidated weights, here without DeepSpeed
    summary = trainer.train(
        load_config(config, [f"train.init_from={step / 'model.pt'}", "train.max_steps_per_epoch=2"]),
        tmp_path / "from-zero2",
    )
    assert summary["status"] == "finished"


@pytest.mark.slow
@pytest.mark.distributed
def test_deepspeed_zero3_bf16_resnet_trains_and_predicts(data, tmp_path):
    """ZeRO-3 shards the parameters; model.pt is gathered whole for evaluate/predict."""
    config = write_config(
        tmp_path / "c.yaml",
        data / "shards",
        "train.epochs=1",
        "train.max_steps_per_epoch=3",
        "backend.precision=bf16",
        "model.image.name=resnet18",
    )
    run_dir = tmp_path / "run"
    check(run(torchrun_cmd(_train_args(config, run_dir, "backend.name=deepspeed", "backend.zero_stage=3"))))
    assert [r["step"] for r in records(run_dir, "train")] == [1, 2, 3]
    weights = torch.load(run_dir / "checkpoints" / "best" / "model.pt", weights_only=True)
    assert weights["image_encoder.backbone.conv1.weight"].shape == (64, 3, 7, 7)
    rows = _predict_rows(run_dir, data / "shards", tmp_path / "pred.csv")
    assert len(rows) == N_TEST + 1
