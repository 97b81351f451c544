"""engine/step.py: the shared train step reads nothing back on the hot path; the ledger's lag."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dist_utils import check, records, run, torchrun_cmd, write_config
from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.engine.checkpoint.checkpointer import TrainState
from msa_dist.engine.step import FIELDS, StepLedger, StepResult
from msa_dist.common.errors import MsaDistError

ENTRY = str(Path(__file__).parents[2] / "helpers" / "dist_entry.py")


def _result(**values) -> StepResult:
    stats = torch.zeros(len(FIELDS), dtype=torch.float64)
    for name, value in {"micro": 1, "finite": 1, **values}.items():
        stats[FIELDS.index(name)] = value
    return StepResult(stats, samples=8)


def test_the_ledger_folds_a_step_in_one_step_late_or_at_once_when_settled():
    state = TrainState()
    ledger = StepLedger(state, max_nonfinite=5)
    ledger.start_epoch(None)
    ledger.add(_result(loss_sum=2.0))
    assert state.loss_window == [0.0, 0]  # not read yet: the GPU may still be computing it
    ledger.add(_result(loss_sum=4.0, stop=1))
    assert state.loss_window == [2.0, 1] and not ledger.stop
    ledger.settle()
    assert state.loss_window == [6.0, 2] and ledger.stop
    assert ledger.take_record()["loss"] == 3.0 and state.loss_window == [0.0, 0]


def test_the_ledger_counts_nonfinite_streaks_across_windows_and_stops_the_run():
    state = TrainState()
    ledger = StepLedger(state, max_nonfinite=4)
    ledger.start_epoch(None)
    # windows of 2 micro batches: [ok, bad] then [bad, bad] -> a streak of 3; then [ok, ok] -> 0
    for values in ({"micro": 2, "finite": 1, "nonfinite": 1, "trailing_nonfinite": 1},
                   {"micro": 2, "finite": 0, "nonfinite": 2, "trailing_nonfinite": 2},
                   {"micro": 2, "finite": 2}):
        ledger.add(_result(**values), settle=True)
    assert (state.nonfinite_total, state.nonfinite_streak) == (3, 0)
    ledger.add(_result(micro=2, finite=0, nonfinite=2, trailing_nonfinite=2), settle=True)
    with pytest.raises(MsaDistError, match="4 non-finite losses in a row"):
        ledger.add(_result(micro=2, finite=0, nonfinite=2, trailing_nonfinite=2), settle=True)


def test_ddp_training_reads_no_device_value_back_per_step(tmp_path):
    """2 CPU ranks, DDP, accumulation 2, a fused AdamW: counting every host read of a tensor
    (`.item()`, `bool()`, `float()`, `int()`, `.tolist()`) inside the loop, the only one left is the
    ledger reading each step's numbers from their host copy, one step late (on a GPU that copy is
    pinned memory the GPU filled long before). Hugging Face's 2D-mask check (`mask.all()`) would
    show up here as one read per forward."""
    raw = write_synthetic_dataset(tmp_path / "raw", n_labelled=120, n_test=4, image_px=32)
    build_shards(raw, tmp_path / "shards", val_fraction=0.2, seed=0, shard_size=40)
    config = write_config(tmp_path / "c.yaml", tmp_path / "shards", "train.epochs=2", "optim.fused=true",
                          "train.grad_accum_steps=2", "log.every_steps=100")
    reads = tmp_path / "reads"
    check(run(torchrun_cmd([ENTRY, "train", "--config", str(config), "--run-dir", str(tmp_path / "run"),
                            "backend.name=ddp"], module=None), timeout=300, MSA_TEST_HOST_READS=str(reads)))
    step_file = Path(__file__).parents[3] / "msa_dist" / "engine" / "step.py"
    read_line = next(i for i, line in enumerate(step_file.read_text().splitlines(), 1) if ".tolist()" in line)
    for rank in (0, 1):
        counts = json.loads((reads / f"rank{rank}.json").read_text())
        assert counts.pop("micro_steps") == 12 and counts.pop("epochs") == 2
        assert counts == {f"step.py:{read_line}": 6}, counts  # one per optimizer step, nothing else
    assert len(records(tmp_path / "run", "eval")) == 2


@pytest.mark.parametrize("fused", [True, False])
def test_a_step_whose_every_loss_is_nonfinite_changes_no_weight_but_batchnorm_statistics(fused):
    """Defect (d): the skipped micro batch contributes nothing to the weights or AdamW's moments
    (fused: decided on the device via `found_inf`; otherwise read back once per step), yet its
    forward pass, in train mode, has updated BatchNorm's running statistics."""
    from msa_dist.config.schema import BackendConfig, ImageEncoderConfig, ModelConfig, OptimConfig
    from msa_dist.engine.backends import build_backend
    from msa_dist.engine.runtime import read_env
    from msa_dist.engine.step import TrainStep
    from msa_dist.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(modality="image", image=ImageEncoderConfig(name="tiny", weights="none", tiny_width=8)),
                        vocab_size=10, pretrained=False)
    backend = build_backend(BackendConfig(name="single", device="cpu"), read_env("cpu"))
    backend.prepare(model, OptimConfig(fused=fused, warmup_steps=0), 10, 1, 4)
    batch = {"keys": ["a", "b", "c", "d"], "labels": torch.tensor([0, 1, 2, 0]),
             "images": torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nan_step = TrainStep(backend, lambda logits, labels: torch.nn.functional.cross_entropy(logits, labels) * float("nan"),
                         "image")
    stats = nan_step(batch, is_boundary=True).read()
    assert (stats["nonfinite"], stats["finite"]) == (1, 0)
    after = model.state_dict()
    weights = [k for k in before if "running" not in k and "num_batches" not in k]
    assert weights and all(torch.equal(before[k], after[k]) for k in weights)
    assert any(not torch.equal(before[k], after[k]) for k in before if "running_mean" in k)
    moments = [s["exp_avg"] for s in backend.optimizer.state.values()]
    assert all(not m.any() for m in moments)  # AdamW learnt nothing either
    ok = TrainStep(backend, torch.nn.functional.cross_entropy, "image")(batch, is_boundary=True).read()
    assert ok["finite"] == 1 and not all(torch.equal(before[k], model.state_dict()[k]) for k in weights)
