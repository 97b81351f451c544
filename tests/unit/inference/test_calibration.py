"""Logit offsets (inference/calibration.py): tuned on the validation split, they raise macro-F1."""

from __future__ import annotations

import pytest
import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.inference.calibration import adjusted_metrics, tune_offsets


def test_logit_offsets_raise_macro_f1_when_a_class_is_under_predicted():
    torch.manual_seed(0)
    labels = torch.tensor([0] * 60 + [1] * 10 + [2] * 30)
    log_probs = torch.log_softmax(torch.nn.functional.one_hot(labels, 3).float() * 2 + torch.randn(100, 3), -1)
    log_probs[:, 1] -= 1.5  # the model is shy of class 1 (neutral)
    offsets = tune_offsets(log_probs, labels)
    before = adjusted_metrics(log_probs, labels, torch.zeros(3))["macro_f1"]
    after = adjusted_metrics(log_probs, labels, offsets)["macro_f1"]
    assert offsets[0] == 0 and offsets[1] > 0.5 and after > before
    with pytest.raises(MsaDistError, match="labelled"):
        tune_offsets(log_probs, torch.full((100,), -1))
