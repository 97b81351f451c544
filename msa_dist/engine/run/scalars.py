"""What every tracker logs from a run's records: the scalar names, the config as flat params, the
confusion matrix as a picture (tracking.py's sinks and mlflow_sink.py share them)."""

from __future__ import annotations

from msa_dist.common.labels import LABELS
from msa_dist.config.schema import Config, to_dict

TRAIN_SCALARS = ("loss", "lr", "grad_norm", "samples_per_s", "data_wait", "nonfinite_total")
EVAL_SCALARS = ("accuracy", "macro_f1", "weighted_f1", "loss")  # loss: the val cross-entropy


def flat_hparams(cfg: Config) -> dict:
    """The resolved config as dotted keys with TensorBoard-friendly values (lists become strings)."""
    out = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}{key}." if isinstance(sub, dict) else f"{prefix}{key}", sub)
            return
        out[prefix] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk("", to_dict(cfg))
    return out


def confusion_image(matrix: list[list[int]], title: str):
    """An RGB uint8 [H, W, 3] picture of a [true, predicted] count matrix (matplotlib's Agg canvas,
    no pyplot state: neither TensorBoard's add_figure nor wandb's figure support work without pyplot)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    high = max(max(row) for row in matrix) / 2
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=9, color="white" if count > high else "black")
    ax.set_xticks(range(len(LABELS)), LABELS, fontsize=8)
    ax.set_yticks(range(len(LABELS)), LABELS, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
