"""What a person sees: rich progress bars and metric tables (rank 0 only)."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from msa_dist.common.labels import LABELS

console = Console(stderr=False)


def progress_bar(enabled: bool):
    """A rich Progress for the training loop, or a do-nothing stand-in when disabled."""
    if not enabled:
        return _NullProgress()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[speed]:.1f} samples/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class _NullProgress(contextlib.nullcontext):
    def __enter__(self):
        return self

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass


def metrics_table(metrics: dict, title: str) -> Table:
    """Accuracy, macro/weighted F1, per-class P/R/F1 and the confusion matrix as one table."""
    table = Table(title=title)
    table.add_column("class")
    for col in ("precision", "recall", "F1", "support"):
        table.add_column(col, justify="right")
    for name in LABELS:
        pc = metrics["per_class"][name]
        table.add_row(name, f"{pc['precision']:.3f}", f"{pc['recall']:.3f}", f"{pc['f1']:.3f}", str(pc["support"]))
    table.add_section()
    table.add_row("accuracy", "", "", f"{metrics['accuracy']:.4f}", str(metrics["samples"]))
    table.add_row("macro-F1", "", "", f"{metrics['macro_f1']:.4f}", "")
    table.add_row("weighted-F1", "", "", f"{metrics['weighted_f1']:.4f}", "")
    return table


def confusion_table(metrics: dict) -> Table:
    table = Table(title="confusion matrix (rows: true, columns: predicted)")
    table.add_column("")
    for name in LABELS:
        table.add_column(name, justify="right")
    for name, row in zip(LABELS, metrics["confusion_matrix"]):
        table.add_row(name, *map(str, row))
    return table


def print_metrics(metrics: dict, title: str) -> None:
    console.print(metrics_table(metrics, title))
    console.print(confusion_table(metrics))
