"""The search's report (rank 0): its trials ranked (search.md, search.json), the best config, and
search.png: each trial's objective with the best so far, and the intermediate values pruning read."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from msa_dist.common.atomic import write_atomic
from msa_dist.common.display import console
from msa_dist.config.schema import Config, save_config
from msa_dist.experiments.plots import _save
from msa_dist.experiments.search_space import apply_params
from msa_dist.experiments.tables import Column, markdown_table, rich_table

ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 2, "FAIL": 3}


def trial_rows(study) -> list[dict]:
    """One row per trial: finished ones by value (best first), then the pruned by their last reported value."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                "last_step": last,
                "last_reported": t.intermediate_values[last] if last is not None else None,
                "train_seconds": t.user_attrs.get("train_seconds"),
                "params": dict(t.params),
                "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            }
        )

    def key(row):
        score = row["value"] if row["value"] is not None else row["last_reported"]
        return (ORDER.get(row["state"], 3), -(score if score is not None else float("-inf")), row["trial"])

    rows.sort(key=key)
    for i, row in enumerate(rows):
        row["rank"] = i + 1
        row.update({f"param:{k}": v for k, v in row["params"].items()})
    return rows


def plot_search(rows: list[dict], metric: str, step_name: str, path: Path) -> Path:
    """Left: objective per trial number, the best so far as a line. Right: intermediate values per step."""
    fig = Figure(figsize=(10.0, 4.0))
    history, curves = fig.subplots(1, 2)
    by_number = sorted(rows, key=lambda r: r["trial"])
    done = [r for r in by_number if r["state"] == "COMPLETE"]
    pruned = [r for r in by_number if r["state"] == "PRUNED" and r["last_reported"] is not None]
    history.scatter([r["trial"] for r in done], [r["value"] for r in done], label="finished", color="tab:blue")
    history.scatter([r["trial"] for r in pruned], [r["last_reported"] for r in pruned], label="pruned", marker="x")
    best, xs, ys = float("-inf"), [], []
    for r in done:
        best = max(best, r["value"])
        xs.append(r["trial"])
        ys.append(best)
    history.step(xs, ys, where="post", color="tab:green", label="best so far")
    history.set_xlabel("trial")
    history.set_ylabel(metric)
    history.legend(fontsize=8)
    for r in by_number:
        if r["intermediate"]:
            steps = [int(s) for s in r["intermediate"]]
            style = "--" if r["state"] == "PRUNED" else "-"
            curves.plot(steps, list(r["intermediate"].values()), style, marker=".", alpha=0.7)
    for ax in (history, curves):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_xlabel(step_name)
    curves.set_ylabel(f"{metric} reported")
    curves.set_title("intermediate values (dashed: pruned)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def write_search_report(study, cfg: Config, run_dir: Path, metric: str, n_trials: int, complete: bool, cv: int) -> dict:
    """search.md, search.json, search.png and best_config.yaml; the table printed too."""
    rows = trial_rows(study)
    keys = sorted({k for r in rows for k in r["params"]})
    columns = (
        [Column("rank", "#", str, True), Column("trial", "trial", str, True), Column("state", "state")]
        + [Column(f"param:{k}", k.rsplit(".", 1)[-1], _fmt) for k in keys]
        + [
            Column("value", metric, _fmt, True),
            Column("last_step", "last fold" if cv else "last epoch", str, True),
            Column("train_seconds", "seconds", lambda v: f"{v:.0f}", True),
        ]
    )
    done = sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows)
    scored = f"{cv}-fold CV mean" if cv else "best val"
    title = f"search: {done}/{n_trials} trials finished or pruned, ranked by {scored} {metric}"
    console.print(rich_table(title, columns, rows))
    note = "a pruned trial's value is the last one it reported, at its last " + ("fold" if cv else "epoch")
    lines = [f"# Search\n\n{title} (Optuna TPE; {note}; the study: {run_dir / 'study.db'}).\n"]
    lines.append(markdown_table(columns, rows))
    best = next((r for r in rows if r["state"] == "COMPLETE"), None)
    if best is not None:
        save_config(apply_params(cfg, best["params"]), run_dir / "best_config.yaml")
        lines.append(f"Best: trial {best['trial']} ({metric} {best['value']:.4f}); its config: best_config.yaml\n")
        console.print(f"best: trial {best['trial']} ({metric} {best['value']:.4f}) -> {run_dir / 'best_config.yaml'}")
    if rows:
        plot_search(rows, metric, "fold" if cv else "epoch", run_dir / "search.png")
        lines.append("![search](search.png)\n")
    if not complete:
        lines.append("**Incomplete**: a trial was preempted; run the same command again.\n")
    write_atomic(run_dir / "search.md", "\n".join(lines))
    summary = {"metric": metric, "n_trials": n_trials, "complete": complete, "cv_folds": cv, "trials": rows}
    write_atomic(run_dir / "search.json", json.dumps(summary, indent=1, default=str))
    return summary


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
