"""Per-run reports (plots + report.md) and side-by-side comparisons of runs.

A run directory holds config.yaml, metrics.jsonl (train and eval records) and
checkpoints/best/metrics.json; `write_run_report` adds confusion_matrix.png, curves.png and report.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from msa_dist.common.atomic import write_atomic
from msa_dist.common.display import console
from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import LABELS
from msa_dist.experiments.plots import plot_confusion_matrix, plot_curves
from msa_dist.experiments.tables import Column, flatten_metrics, markdown_table, metric_columns, rich_table


def read_records(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(train records, val eval records) of metrics.jsonl, by step; a resumed run's repeats keep the last."""
    path = Path(run_dir) / "metrics.jsonl"
    by_key: dict[tuple, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if record.get("type") in ("train", "eval"):
                by_key[(record["type"], record.get("split"), record["step"])] = record
    records = sorted(by_key.values(), key=lambda r: r["step"])
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval" and r.get("split", "val") == "val"]
    return train, evals


def read_config(run_dir: str | Path) -> dict:
    """The run's resolved config as a plain dict."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise MsaDistError(f"{run_dir} is not a run directory (no config.yaml)")
    return yaml.safe_load(path.read_text()) or {}


def best_metrics(run_dir: str | Path, evals: list[dict] | None = None) -> tuple[dict | None, int | None]:
    """(val metrics of the best checkpoint, its epoch); falls back to the last evaluation."""
    run_dir = Path(run_dir)
    evals = read_records(run_dir)[1] if evals is None else evals
    path = run_dir / "checkpoints" / "best" / "metrics.json"
    if path.is_file():
        metrics = json.loads(path.read_text())
        metric = read_config(run_dir).get("train", {}).get("best_metric", "macro_f1")
        # the trainer keeps the first evaluation that reached the best value
        epoch = next((r["epoch"] for r in evals if r.get(metric) == metrics.get(metric)), None)
        return metrics, epoch
    if evals:
        return evals[-1], evals[-1]["epoch"]
    return None, None


def run_summary(run_dir: str | Path) -> dict:
    """One row: what the run is (modality, fusion, backbones, seed) and its best val metrics."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    train, evals = read_records(run_dir)
    metrics, epoch = best_metrics(run_dir, evals)
    model = cfg.get("model", {})
    row = {
        "run": run_dir.name,
        "path": str(run_dir),
        "modality": model.get("modality"),
        "fusion": model.get("head", {}).get("fusion"),
        "text": model.get("text", {}).get("name"),
        "image": model.get("image", {}).get("name"),
        "seed": cfg.get("train", {}).get("seed"),
        "loss": cfg.get("train", {}).get("loss", "ce"),
        "epochs": f"{evals[-1]['epoch'] if evals else 0}/{cfg.get('train', {}).get('epochs')}",
        "best_epoch": epoch,
        "metrics": metrics,
    }
    row.update(flatten_metrics(metrics))
    return row


RUN_COLUMNS = [
    Column("run", "run"),
    Column("modality", "modality"),
    Column("fusion", "fusion"),
    Column("text", "text"),
    Column("image", "image"),
    Column("seed", "seed"),
    Column("epochs", "epochs"),
    Column("best_epoch", "best epoch"),
]


def write_run_report(run_dir: str | Path) -> Path:
    """Write confusion_matrix.png, curves.png and report.md into the run dir; returns report.md's path."""
    run_dir = Path(run_dir)
    train, evals = read_records(run_dir)
    row = run_summary(run_dir)
    metrics = row["metrics"]
    title = f"{run_dir.name}: {row['modality']}, fusion={row['fusion']}"
    plot_curves(train, evals, run_dir / "curves.png", title)
    lines = [
        f"# Run report: {run_dir.name}",
        "",
        f"- modality **{row['modality']}**, fusion **{row['fusion']}**, text `{row['text']}`, "
        f"image `{row['image']}`, loss {row['loss']}, seed {row['seed']}",
        f"- epochs run {row['epochs']}; best checkpoint (by val "
        f"{read_config(run_dir).get('train', {}).get('best_metric', 'macro_f1')}) at epoch {row['best_epoch']}",
        "",
    ]
    if metrics:
        matrix = metrics["confusion_matrix"]
        plot_confusion_matrix(
            matrix,
            run_dir / "confusion_matrix.png",
            f"val, best checkpoint: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}",
        )
        lines += [
            "## Validation metrics (best checkpoint)",
            "",
            markdown_table(metric_columns(per_class=False), [row]),
            _per_class_markdown(metrics),
            "## Confusion matrix (rows: true, columns: predicted)",
            "",
            markdown_table(
                [Column("true", "true")] + [Column(n, n, str, True) for n in LABELS],
                [{"true": name, **dict(zip(LABELS, counts))} for name, counts in zip(LABELS, matrix)],
            ),
            "![confusion matrix](confusion_matrix.png)",
            "",
        ]
    else:
        lines += ["No evaluation yet.", ""]
    if evals:
        lines += [
            "## Validation per epoch",
            "",
            markdown_table(
                [Column("epoch", "epoch", str, True), Column("step", "step", str, True)]
                + metric_columns(per_class=False),
                [{"epoch": r["epoch"], "step": r["step"], **flatten_metrics(r)} for r in evals],
            ),
        ]
    lines += ["![curves](curves.png)", ""]
    out = run_dir / "report.md"
    write_atomic(out, "\n".join(lines))  # a link planted there is replaced, never followed
    return out


def _per_class_markdown(metrics: dict) -> str:
    columns = [
        Column("class", "class"),
        Column("precision", "precision", lambda v: f"{v:.3f}", True),
        Column("recall", "recall", lambda v: f"{v:.3f}", True),
        Column("f1", "F1", lambda v: f"{v:.3f}", True),
        Column("support", "support", str, True),
    ]
    rows = [{"class": name, **metrics["per_class"][name]} for name in LABELS]
    return markdown_table(columns, rows)


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run dirs as given; an ablation or sweep dir stands for the runs inside it."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / "config.yaml").is_file():
            runs.append(path)
            continue
        inner = sorted(p.parent for p in path.glob("*/config.yaml"))
        if not inner:
            raise MsaDistError(f"{path} is not a run directory (no config.yaml) and holds none")
        runs += inner
    return runs


def compare_runs(paths: list[str | Path], out: str | Path, show: bool = True) -> list[dict]:
    """Summarise runs side by side: a rich table in the terminal and a markdown file at `out`."""
    runs = expand_run_dirs(paths)
    rows = [run_summary(run) for run in runs]
    for run in runs:
        write_run_report(run)
    columns = RUN_COLUMNS + metric_columns()
    if show:  # the terminal gets the F1 of each class only; the file has everything
        narrow = [
            c
            for c in columns
            if c.key in ("run", "modality", "fusion", "seed", "best_epoch", "accuracy", "macro_f1")
            or c.key.endswith(".f1")
        ]
        console.print(rich_table("runs (val metrics of each run's best checkpoint)", narrow, rows))
    text = [
        "# Run comparison",
        "",
        "Validation metrics of each run's best checkpoint.",
        "",
        markdown_table(columns, rows),
        "Runs:",
        "",
    ]
    text += [f"- `{row['run']}`: {row['path']} ([report]({Path(row['path']).resolve() / 'report.md'}))" for row in rows]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(text) + "\n")
    return rows
