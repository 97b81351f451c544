"""The bag-of-words reference on the same folds as `cv`: TF-IDF (word 1-2 grams, sublinear term
frequencies) + class-balanced logistic regression (C=10), the settings of ../shared/bench/tfidf_baseline.py.
Text only; needs scikit-learn (`pip install scikit-learn`, or the `baseline` extra)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from msa_dist.common.atomic import write_atomic
from msa_dist.common.display import console
from msa_dist.engine.metrics import confusion_matrix, metrics_from_confusion
from msa_dist.experiments.folds import fold_texts
from msa_dist.experiments.tables import mean_std, scores

CACHE_FILE = "bow_reference.json"


def bow_fold_scores(folds_root: str | Path, k: int) -> list[dict]:
    """Scores (accuracy, macro-F1, per-class F1) of the reference on each fold's held-out part."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    rows = []
    for fold in range(k):
        train_texts, train_labels = fold_texts(folds_root, fold, "train")
        val_texts, val_labels = fold_texts(folds_root, fold, "val")
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        clf = LogisticRegression(C=10, max_iter=2000, class_weight="balanced")
        clf.fit(vectorizer.fit_transform(train_texts), train_labels)
        preds = torch.as_tensor(clf.predict(vectorizer.transform(val_texts)))
        rows.append({"fold": fold, **scores(metrics_from_confusion(confusion_matrix(torch.tensor(val_labels), preds)))})
    return rows


def baseline_summary(folds_root: str | Path | None, k: int) -> dict | None:
    """{'runs', 'mean' (with .std), 'seconds'} of the reference, or None without scikit-learn or folds."""
    if folds_root is None or not Path(folds_root).is_dir():
        return None
    try:
        import sklearn  # noqa: F401
    except ImportError:
        console.print("[dim]bag-of-words reference skipped: pip install scikit-learn to add it[/]")
        return None
    cache = Path(folds_root) / CACHE_FILE  # it depends on the folds alone
    if cache.is_file():
        return json.loads(cache.read_text())
    start = time.perf_counter()
    rows = bow_fold_scores(folds_root, k)
    summary = {"runs": rows, "mean": mean_std(rows), "seconds": round(time.perf_counter() - start, 1)}
    write_atomic(cache, json.dumps(summary))
    return summary
