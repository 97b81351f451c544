"""Result tables: one column spec, rendered as markdown (files) or rich (terminal)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from msa_dist.common.labels import LABELS

SCORE_KEYS = ("accuracy", "macro_f1") + tuple(f"{name}.f1" for name in LABELS)  # what `cv` averages


@dataclass(frozen=True)
class Column:
    """A table column: where its value sits in a row dict, its header, and how to print it."""

    key: str
    header: str
    fmt: Callable[[Any], str] = str
    numeric: bool = False


def _num(digits: int) -> Callable[[Any], str]:
    return lambda v: "" if v is None else f"{v:.{digits}f}"


def metric_columns(per_class: bool = True) -> list[Column]:
    """Accuracy, macro-F1, weighted-F1 and (optionally) precision / recall / F1 of each class."""
    cols = [
        Column("accuracy", "accuracy", _num(4), True),
        Column("macro_f1", "macro-F1", _num(4), True),
        Column("weighted_f1", "weighted-F1", _num(4), True),
    ]
    if per_class:
        for name in LABELS:
            for short, field in (("P", "precision"), ("R", "recall"), ("F1", "f1")):
                cols.append(Column(f"{name}.{field}", f"{name} {short}", _num(3), True))
    return cols


def flatten_metrics(metrics: dict | None) -> dict:
    """accuracy / macro_f1 / weighted_f1 and `<class>.<precision|recall|f1>` from a metrics dict."""
    if not metrics:
        return {}
    row = {k: metrics.get(k) for k in ("accuracy", "macro_f1", "weighted_f1")}
    for name, values in metrics.get("per_class", {}).items():
        for field in ("precision", "recall", "f1"):
            row[f"{name}.{field}"] = values.get(field)
    return row


def _cell(column: Column, row: dict) -> str:
    value = row.get(column.key)
    return "" if value is None else column.fmt(value)


def markdown_table(columns: list[Column], rows: list[dict]) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned)."""
    head = "| " + " | ".join(c.header for c in columns) + " |"
    rule = "|" + "|".join("---:" if c.numeric else "---" for c in columns) + "|"
    body = ["| " + " | ".join(_cell(c, row).replace("|", "\\|") for c in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body]) + "\n"


def rich_table(title: str, columns: list[Column], rows: list[dict]) -> Table:
    """The same table for the terminal."""
    table = Table(title=title)
    for c in columns:
        # numbers keep their width; names and headers wrap rather than end in "…"
        width = max([len(_cell(c, row)) for row in rows] + [1]) if c.numeric else None
        table.add_column(c.header, justify="right" if c.numeric else "left", min_width=width, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(c, row) for c in columns))
    return table


def transpose(columns: list[Column], rows: list[dict], name_key: str = "point") -> tuple[list[Column], list[dict]]:
    """Columns become rows (one column per row's `name_key`): narrow enough for a terminal."""
    new_columns = [Column("metric", "")] + [Column(str(r[name_key]), str(r[name_key]), str, True) for r in rows]
    new_rows = [{"metric": c.header, **{str(r[name_key]): _cell(c, r) for r in rows}} for c in columns]
    return new_columns, new_rows


def scores(metrics: dict) -> dict:
    """accuracy, macro_f1 and `<class>.f1` of a metrics dict."""
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        **{f"{name}.f1": metrics["per_class"][name]["f1"] for name in LABELS},
    }


def mean_std(rows: list[dict]) -> dict:
    """`key` -> mean and `key.std` -> sample standard deviation (0 for one row) of every score."""
    out = {}
    for key in SCORE_KEYS:
        values = [row[key] for row in rows]
        out[key] = statistics.fmean(values)
        out[key + ".std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out
