"""An EMA of the weights (train.ema_decay, engine/ema.py). Mixup: tests/unit/models/test_classifier.py."""

from __future__ import annotations

import json

import pytest
import torch
from dist_utils import final_weights, write_config

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import load_config
from msa_dist.engine import trainer
from msa_dist.engine.ema import WeightAverage


def test_the_average_follows_the_weights_with_a_warm_up_and_swaps_in_and_out():
    module = torch.nn.BatchNorm1d(2)  # a parameter and float buffers; num_batches_tracked is an int
    ema = WeightAverage(module, decay=0.9)
    assert "num_batches_tracked" not in ema.names and "weight" in ema.names
    start = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.fill_(3.0)
    ema.update(step=1)  # decay_t = min(0.9, 2 / 11)
    expected = start + (1 - 2 / 11) * (3.0 - start)
    assert torch.allclose(ema.shadow[ema.names.index("weight")], expected)
    with ema.averaged():
        assert torch.allclose(module.weight, expected)
        assert torch.equal(ema.state_dict()["weight"], torch.full((2,), 3.0))  # the trained weights, aside
    assert torch.equal(module.weight.detach(), torch.full((2,), 3.0))


def test_a_disabled_average_does_nothing_and_refuses_an_ema_checkpoint():
    module = torch.nn.Linear(2, 2)
    ema = WeightAverage(module, decay=0.0)
    before = module.weight.detach().clone()
    ema.update(step=5)
    with ema.averaged():
        assert torch.equal(module.weight, before)
    assert ema.state_dict() == {}
    with pytest.raises(MsaDistError, match="saved with train.ema_decay > 0"):
        ema.restore({"weight": before}, "step-1")
    with pytest.raises(MsaDistError, match="saved with train.ema_decay = 0"):
        WeightAverage(module, decay=0.5).restore({}, "step-1")


def test_a_run_with_ema_saves_the_average_and_keeps_the_trained_weights_for_resume(shard_dir, tmp_path):
    config = write_config(tmp_path / "c.yaml", shard_dir, "train.epochs=1", "train.ema_decay=0.5")
    trainer.train(load_config(config), tmp_path / "run")
    step_dir = tmp_path / "run" / "checkpoints" / (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    saved = final_weights(tmp_path / "run")
    trained = torch.load(step_dir / "state.pt", weights_only=False)["ema"]
    assert trained.keys() <= saved.keys() and any(not torch.equal(saved[k], trained[k]) for k in trained)
    assert "ema" not in json.loads((step_dir / "client.json").read_text())  # tensors stay out of the JSON
