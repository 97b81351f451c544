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


def test_distill_loss_blends_the_hard_loss_with_a_tempered_kl_to_the_teacher(tmp_path):
    from msa_dist.engine.losses import DistillLoss
    from msa_dist.engine.teacher import SoftTargets

    torch.manual_seed(0)
    logits, labels = torch.randn(8, NUM_CLASSES), torch.randint(0, NUM_CLASSES, (8,))
    teacher = torch.softmax(torch.randn(8, NUM_CLASSES), dim=-1)
    hard = torch.nn.CrossEntropyLoss()
    target = SoftTargets(labels, teacher)
    torch.testing.assert_close(DistillLoss(hard, 0.0, 3.0)(logits, target), hard(logits, labels))
    t = 2.0
    soft_teacher = teacher.pow(1 / t) / teacher.pow(1 / t).sum(-1, keepdim=True)
    log_student = torch.log_softmax(logits / t, dim=-1)
    kl = (soft_teacher * (soft_teacher.log() - log_student)).sum(-1).mean() * t * t
    expected = 0.25 * hard(logits, labels) + 0.75 * kl
    torch.testing.assert_close(DistillLoss(hard, 0.75, t)(logits, target), expected)
    # a student that already gives the teacher's probabilities has nothing left to learn from it
    assert DistillLoss(hard, 1.0, t)(teacher.log(), target).abs() < 1e-6
    grad = torch.zeros_like(logits, requires_grad=True)
    DistillLoss(hard, 1.0, 1.0)(grad, target).backward()
    torch.testing.assert_close(grad.grad, (torch.full_like(teacher, 1 / NUM_CLASSES) - teacher) / 8)


def test_build_objective_without_a_teacher_is_the_hard_loss(shard_dir, tmp_path):
    from msa_dist.data.format.manifest import load_manifest
    from msa_dist.engine.losses import DistillLoss, build_objective
    from msa_dist.engine.teacher import TeacherTargets, hard_labels, write_teacher_file

    hard = torch.nn.CrossEntropyLoss()
    assert build_objective(TrainConfig(), hard, str(shard_dir)) == (hard, hard_labels)
    guids = load_manifest(shard_dir)["splits"]["train"]["guids"]
    path = tmp_path / "teacher.json"
    write_teacher_file(path, guids, torch.full((len(guids), NUM_CLASSES), 1 / NUM_CLASSES), {})
    loss, targets = build_objective(TrainConfig(teacher=str(path), distill_weight=0.3), hard, str(shard_dir))
    assert isinstance(loss, DistillLoss) and loss.weight == 0.3 and isinstance(targets, TeacherTargets)
    write_teacher_file(path, guids[1:], torch.full((len(guids) - 1, NUM_CLASSES), 1 / NUM_CLASSES), {})
    with pytest.raises(MsaDistError, match=f"no probabilities for 1 of the {len(guids)} train samples"):
        build_objective(TrainConfig(teacher=str(path)), hard, str(shard_dir))
    with pytest.raises(MsaDistError, match="train.distill_weight"):
        TrainConfig(distill_weight=1.5)
    with pytest.raises(MsaDistError, match="train.distill_temperature"):
        TrainConfig(distill_temperature=0.0)
