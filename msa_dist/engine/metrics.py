"""Classification metrics from a confusion matrix (summable across ranks before computing)."""

from __future__ import annotations

import torch

from msa_dist.common.labels import LABELS, NUM_CLASSES


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """[true, predicted] counts as an int64 tensor."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def metrics_from_confusion(cm: torch.Tensor) -> dict:
    """Accuracy, per-class precision/recall/F1, macro- and weighted-F1, and the matrix itself."""
    cm = cm.double()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    total = cm.sum().clamp(min=1)
    out = {
        "accuracy": float(tp.sum() / total),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support).sum() / total),
        "samples": int(cm.sum()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(LABELS)
        },
        "confusion_matrix": cm.long().tolist(),
    }
    return out
