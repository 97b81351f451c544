"""engine/step.py: the ledger's lag, a step of non-finite losses; that the step reads nothing back on the
hot path is counted on two DDP ranks in tests/integration/test_two_ranks.py."""

from __future__ import annotations

import pytest
import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.engine.checkpoint.checkpointer import TrainState
from msa_dist.engine.step import FIELDS, StepLedger, StepResult


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
    for values in (
        {"micro": 2, "finite": 1, "nonfinite": 1, "trailing_nonfinite": 1},
        {"micro": 2, "finite": 0, "nonfinite": 2, "trailing_nonfinite": 2},
        {"micro": 2, "finite": 2},
    ):
        ledger.add(_result(**values), settle=True)
    assert (state.nonfinite_total, state.nonfinite_streak) == (3, 0)
    ledger.add(_result(micro=2, finite=0, nonfinite=2, trailing_nonfinite=2), settle=True)
    with pytest.raises(MsaDistError, match="4 non-finite losses in a row"):
        ledger.add(_result(micro=2, finite=0, nonfinite=2, trailing_nonfinite=2), settle=True)


@pytest.mark.parametrize("fused", [True, False])
def test_a_step_whose_every_loss_is_nonfinite_changes_no_weight_but_batchnorm_statistics(fused):
    """Defect (d): the skipped micro batch contributes nothing to the weights or AdamW's moments
    (fused: decided on the device via `found_inf`; otherwise read back once per step), yet its
    forward pass, in train mode, has updated BatchNorm's running statistics."""
    from msa_dist.config.model_section import ImageEncoderConfig, ModelConfig
    from msa_dist.config.schema import BackendConfig, OptimConfig
    from msa_dist.engine.backends import build_backend
    from msa_dist.engine.runtime import read_env
    from msa_dist.engine.step import TrainStep
    from msa_dist.models import build_model

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(modality="image", image=ImageEncoderConfig(name="tiny", weights="none", tiny_width=8)),
        vocab_size=10,
        pretrained=False,
    )
    backend = build_backend(BackendConfig(name="single", device="cpu"), read_env("cpu"))
    backend.prepare(model, OptimConfig(fused=fused, warmup_steps=0), 10, 1, 4)
    batch = {
        "keys": ["a", "b", "c", "d"],
        "labels": torch.tensor([0, 1, 2, 0]),
        "images": torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8),
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nan_step = TrainStep(
        backend, lambda logits, labels: torch.nn.functional.cross_entropy(logits, labels) * float("nan"), "image"
    )
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
