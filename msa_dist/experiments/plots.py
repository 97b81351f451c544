"""Run plots with matplotlib's Agg canvas (no display, no pyplot state): confusion matrix and curves."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from msa_dist.common.atomic import write_atomic
from msa_dist.common.labels import LABELS

DPI = 100
CONFUSION_SIZE = (5.0, 4.5)  # inches: 500 x 450 px
CURVES_SIZE = (10.0, 4.0)  # inches: 1000 x 400 px


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    png = io.BytesIO()
    # no bbox_inches="tight": the PNG keeps the declared size
    fig.savefig(png, dpi=DPI, format="png")
    write_atomic(path, png.getvalue())  # a link planted in the run dir is replaced, never followed
    return Path(path)


def plot_confusion_matrix(matrix: list[list[int]], path: str | Path, title: str = "") -> Path:
    """Rows: true class, columns: predicted; colour = share of the true class, text = count and share."""
    fig = Figure(figsize=CONFUSION_SIZE)
    ax = fig.add_subplot()
    shares = [[v / max(sum(row), 1) for v in row] for row in matrix]
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = range(len(LABELS))
    ax.set_xticks(ticks, LABELS)
    ax.set_yticks(ticks, LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(
                j,
                i,
                f"{count}\n{shares[i][j]:.0%}",
                ha="center",
                va="center",
                color="white" if shares[i][j] > 0.5 else "black",
                fontsize=10,
            )
    ax.set_title(title or "confusion matrix", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(train_records: list[dict], eval_records: list[dict], path: str | Path, title: str = "") -> Path:
    """Left: train loss (and lr) per optimizer step. Right: val accuracy and macro-F1 per epoch."""
    fig = Figure(figsize=CURVES_SIZE)
    loss_ax, val_ax = fig.subplots(1, 2)
    if train_records:
        steps = [r["step"] for r in train_records]
        loss_ax.plot(steps, [r["loss"] for r in train_records], color="tab:blue", label="train loss")
        loss_ax.set_ylabel("loss")
        if all("lr" in r for r in train_records):
            lr_ax = loss_ax.twinx()
            lr_ax.plot(steps, [r["lr"] for r in train_records], color="tab:gray", linestyle="--", label="lr")
            lr_ax.set_ylabel("learning rate (head)")
        loss_ax.legend(loc="upper right")
    else:
        loss_ax.text(0.5, 0.5, "no train records", ha="center", va="center", transform=loss_ax.transAxes)
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_title("training", fontsize=10)
    if eval_records:
        epochs = [r["epoch"] for r in eval_records]
        for key, label in (("accuracy", "val accuracy"), ("macro_f1", "val macro-F1")):
            val_ax.plot(epochs, [r[key] for r in eval_records], marker="o", label=label)
        val_ax.set_ylim(0.0, 1.0)
        val_ax.legend(loc="lower right")
    else:
        val_ax.text(0.5, 0.5, "no evaluations", ha="center", va="center", transform=val_ax.transAxes)
    val_ax.set_xlabel("epoch")
    val_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    val_ax.grid(alpha=0.3)
    val_ax.set_title("validation", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
