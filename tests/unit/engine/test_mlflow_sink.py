"""log.report_to=[mlflow] (engine/run/mlflow_sink.py) against the SQLite tracking store in the run dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_utils import tiny_config

from msa_dist.engine.trainer import train

pytest.importorskip("mlflow", reason="the mlflow extra (pip install 'msa-dist[mlflow]') is not installed")


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


@pytest.mark.slow  # ~30 s on 2 loaded cores: MLflow creates its SQLite schema (alembic migrations) first
def test_params_metrics_per_step_and_artifacts_reach_the_store_and_a_resume_adds_no_duplicate(
    shard_dir, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    from msa_dist.engine.run.mlflow_sink import RUN_ID_FILE, tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    overrides = ("log.report_to=[mlflow]", "train.epochs=2", "checkpoint.keep_last=5")
    train(tiny_config(shard_dir, *overrides), run)
    assert (run / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri(run))
    run_id = (run / RUN_ID_FILE).read_text().strip()
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.data.params["train.epochs"] == "2"
    assert logged.data.params["model.text.name"] == "tiny"

    def history(key):
        return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]

    want = [(r["step"], r["loss"]) for r in records(run, "train")]
    assert len(want) > 2 and history("train/loss") == [(s, pytest.approx(v)) for s, v in want]
    evals = records(run, "eval")
    assert history("val/macro_f1") == [(r["step"], pytest.approx(r["macro_f1"])) for r in evals]
    artifacts = {f.path for f in client.list_artifacts(run_id)}
    assert {"config.yaml", "run_info.json", "metrics.jsonl", "val"} <= artifacts
    images = [f.path for f in client.list_artifacts(run_id, "val")]
    assert len(images) == len(evals) and all(p.endswith(".png") for p in images)

    # killed after epoch 2 was logged, resumed from epoch 1's checkpoint: the same MLflow run, no step twice
    first = sorted((run / "checkpoints").glob("step-*"))[0]
    train(tiny_config(shard_dir, *overrides), run, resume=str(first))
    assert (run / RUN_ID_FILE).read_text().strip() == run_id
    assert [s for s, _ in history("train/loss")] == [s for s, _ in want]
    assert [s for s, _ in history("val/macro_f1")] == [r["step"] for r in evals]
    assert client.get_run(run_id).info.status == "FINISHED"
