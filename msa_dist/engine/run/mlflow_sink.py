"""The MLflow sink of `log.report_to=[mlflow]` (pip install 'msa-dist[mlflow]': mlflow-skinny).

The tracking store is `MLFLOW_TRACKING_URI` when it is set (a server, a database), else an SQLite
file in the run dir (RUN_DIR/mlflow.db, artifacts in RUN_DIR/mlflow-artifacts), so a run tracks
with no server. The experiment is `MLFLOW_EXPERIMENT_NAME` (default msa-dist). The MLflow run id
is kept in the run dir, so a resumed run continues the same MLflow run; MLflow cannot delete
logged points, so instead a resumed run skips each metric's steps the store already holds (an
exact resume logs the same values at those steps again).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from msa_dist.common.atomic import write_atomic
from msa_dist.config.schema import Config
from msa_dist.engine.run.scalars import EVAL_SCALARS, TRAIN_SCALARS, confusion_image, flat_hparams

RUN_ID_FILE = "mlflow_run_id"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlflow-artifacts"
RUN_FILES = ("config.yaml", "run_info.json", "metrics.jsonl")  # logged as artifacts when the run closes


def tracking_uri(run_dir: Path) -> str:
    """`MLFLOW_TRACKING_URI`, or the SQLite store in the run dir."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(run_dir) / DB_FILE).resolve()}"


class MlflowSink:
    """One MLflow run per run dir: the config as params, train/eval scalars per step, the val confusion
    matrices and the run's files as artifacts."""

    def __init__(self, cfg: Config, run_dir: Path, resume_step: int | None):
        from mlflow.tracking import MlflowClient

        self.run_dir = Path(run_dir)
        self.client = MlflowClient(tracking_uri(run_dir))
        id_file = self.run_dir / RUN_ID_FILE
        self.resumed = resume_step is not None and id_file.is_file()  # a new run starts a new MLflow run
        if self.resumed:
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(self._experiment_id(), run_name=self.run_dir.name).info.run_id
            write_atomic(id_file, self.run_id + "\n")
            self.client.log_batch(self.run_id, params=_params(flat_hparams(cfg)))
        self.logged: dict[str, int] = {}  # metric -> the last step the store holds (read on a resume, lazily)

    def _experiment_id(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "msa-dist")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        local = not os.environ.get("MLFLOW_TRACKING_URI")  # our own store: the artifacts beside it
        location = (self.run_dir / ARTIFACTS_DIR).resolve().as_uri() if local else None
        return self.client.create_experiment(name, artifact_location=location)

    def _new(self, key: str, step: int) -> bool:
        """Whether the store lacks `key` at `step` (only a resumed run can already hold it)."""
        if not self.resumed:
            return True
        if key not in self.logged:
            history = self.client.get_metric_history(self.run_id, key)
            self.logged[key] = max((m.step for m in history), default=-1)
        return step > self.logged[key]

    def write(self, record: dict) -> None:
        from mlflow.entities import Metric

        step, kind = record.get("step", 0), record["type"]
        if kind == "train":
            values = {f"train/{k}": record[k] for k in TRAIN_SCALARS if record.get(k) is not None}
        elif kind == "eval":
            split = record.get("split", "val")
            values = {f"{split}/{k}": record[k] for k in EVAL_SCALARS}
            values.update({f"{split}/f1_{name}": v["f1"] for name, v in record.get("per_class", {}).items()})
        else:
            return
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(v), stamp, step) for k, v in values.items() if self._new(k, step)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        if kind == "eval" and "confusion_matrix" in record and metrics:
            title = f"{split} confusion matrix, epoch {record.get('epoch')}"
            image = confusion_image(record["confusion_matrix"], title)
            self.client.log_image(self.run_id, image, f"{split}/confusion_matrix_step{step:07d}.png")

    def close(self) -> None:
        for name in RUN_FILES:
            path = self.run_dir / name
            if path.is_file() and not path.is_symlink():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id)


def _params(values: dict) -> list:
    """The config as MLflow params (a value is at most 6000 characters in MLflow's stores)."""
    from mlflow.entities import Param

    return [Param(key, str(value)[:6000]) for key, value in values.items()]
