"""The losses (engine/losses.py): focal loss against cross-entropy, class weights and their power."""

from __future__ import annotations

import pytest
import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import NUM_CLASSES
from msa_dist.config.schema import TrainConfig
from msa_dist.engine.losses import FocalLoss, build_loss


def test_focal_loss_matches_cross_entropy_at_gamma_zero_and_down_weights_easy_samples():
    torch.manual_seed(0)
    logits, target = torch.randn(16, NUM_CLASSES), torch.randint(0, NUM_CLASSES, (16,))
    weight = torch.tensor([0.5, 3.0, 1.0])
    ce = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)(logits, target)
    torch.testing.assert_close(FocalLoss(0.0, weight, 0.1)(logits, target), ce)
    assert FocalLoss(2.0)(logits, target) < torch.nn.functional.cross_entropy(logits, target)
    loss = build_loss(TrainConfig(loss="focal", focal_gamma=1.0, class_weighting=True), weight)
    assert isinstance(loss, FocalLoss) and torch.equal(loss.weight, weight)
    assert isinstance(build_loss(TrainConfig(), weight), torch.nn.CrossEntropyLoss)
    tempered = build_loss(TrainConfig(class_weighting=True, class_weight_power=0.5), weight)
    torch.testing.assert_close(tempered.weight, weight.sqrt())
    assert build_loss(TrainConfig(class_weighting=False), weight).weight is None
    with pytest.raises(MsaDistError, match="train.focal_gamma"):
        TrainConfig(loss="focal", focal_gamma=-1.0)
