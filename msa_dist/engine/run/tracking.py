"""Live tracking on rank 0: metrics.jsonl (always), TensorBoard, W&B and MLflow (mlflow_sink.py) when
`log.report_to` names them.

The trainer writes one record dict per event (`train`, `eval`, `resume`) to a `Tracker`; each
sink turns it into its own form. A resumed run cuts every sink back to the checkpoint's step, so
curves continue without duplicate steps: metrics.jsonl by its line count, TensorBoard by
rewriting its event files without the later events, W&B by resuming the same run id (W&B itself
drops steps it has already seen), MLflow by skipping the steps its store already holds.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

from msa_dist.common.atomic import write_atomic
from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import Config, to_dict
from msa_dist.engine.run.scalars import EVAL_SCALARS, TRAIN_SCALARS, confusion_image, flat_hparams

TB_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"


class DataWait:
    """Time the loop spends waiting for the next batch, as a fraction of the time since the last `take`."""

    def __init__(self):
        self.waited, self.since = 0.0, time.perf_counter()

    def timed(self, batches: Iterable) -> Iterator:
        """Yield `batches`, adding the time each `next` blocks to the wait."""
        iterator = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waited += time.perf_counter() - t0
            yield batch

    def take(self) -> float:
        """The waiting fraction since the previous call (0..1); starts a new interval."""
        now = time.perf_counter()
        fraction = self.waited / max(now - self.since, 1e-9)
        self.waited, self.since = 0.0, now
        return min(fraction, 1.0)


def cut_back_events(tb_dir: Path, keep_step: int) -> None:
    """Rewrite TensorBoard event files without events after `keep_step` (a resumed run's checkpoint)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        events = [event_pb2.Event.FromString(raw) for raw in RawEventFileLoader(str(path)).Load()]
        if all(e.step <= keep_step for e in events):
            continue
        writer = EventFileWriter(str(tb_dir), filename_suffix=".cut")
        for event in events:
            if event.step <= keep_step and not event.HasField("file_version"):
                writer.add_event(event)
        writer.close()
        path.unlink()


class TensorBoardSink:
    """RUN_DIR/tensorboard: scalars per step, the val confusion matrix as an image, the config as hparams."""

    def __init__(self, cfg: Config, run_dir: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        tb_dir = run_dir / TB_DIR
        if resume_step is not None and tb_dir.is_dir():
            cut_back_events(tb_dir, resume_step)
        self.writer = SummaryWriter(str(tb_dir))
        if resume_step is None:
            from torch.utils.tensorboard.summary import hparams

            for summary in hparams(flat_hparams(cfg), {}):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False) + "```", 0)

    def write(self, record: dict) -> None:
        step = record.get("step", 0)
        if record["type"] == "train":
            for key in TRAIN_SCALARS:
                if record.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", record[key], step)
        elif record["type"] == "eval":
            split = record.get("split", "val")
            for key in EVAL_SCALARS:
                self.writer.add_scalar(f"{split}/{key}", record[key], step)
            for name, values in record.get("per_class", {}).items():
                self.writer.add_scalar(f"{split}/f1_{name}", values["f1"], step)
            if "confusion_matrix" in record:
                title = f"{split} confusion matrix, epoch {record.get('epoch')}"
                self.writer.add_image(
                    f"{split}/confusion_matrix",
                    confusion_image(record["confusion_matrix"], title),
                    step,
                    dataformats="HWC",
                )
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run in RUN_DIR/wandb; its id is kept in the run dir so a resumed run continues it."""

    def __init__(self, cfg: Config, run_dir: Path):
        import wandb

        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        write_atomic(id_file, run_id + "\n")
        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "msa-dist"),
            name=run_dir.name,
            id=run_id,
            dir=str(run_dir),
            config=to_dict(cfg),
            resume="allow",
            mode=os.environ.get("WANDB_MODE", "online"),
        )  # read now, not when wandb was imported

    def write(self, record: dict) -> None:
        step = record.get("step", 0)
        if record["type"] == "train":
            data = {f"train/{k}": record[k] for k in TRAIN_SCALARS if record.get(k) is not None}
        elif record["type"] == "eval":
            split = record.get("split", "val")
            data = {f"{split}/{k}": record[k] for k in EVAL_SCALARS}
            if "confusion_matrix" in record:
                image = confusion_image(record["confusion_matrix"], f"{split} confusion matrix")
                data[f"{split}/confusion_matrix"] = self.wandb.Image(image)
        else:
            return
        self.run.log(data, step=step)

    def close(self) -> None:
        self.run.finish()


def check_report_to(report_to: list) -> None:
    """Fail fast, on every rank, for a tracker that cannot start: tensorboard, W&B or MLflow missing, W&B not logged
    in (the config already checked the names)."""
    if "tensorboard" in report_to:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise MsaDistError(
                "log.report_to has tensorboard but the tensorboard package is missing: pip install tensorboard"
            ) from None
    if "wandb" in report_to:
        try:
            import wandb
        except ImportError:
            raise MsaDistError(
                "log.report_to has wandb but the wandb package is missing: pip install 'msa-dist[wandb]'"
            ) from None
        mode = os.environ.get("WANDB_MODE", "online")
        if mode not in ("offline", "disabled", "dryrun") and not _wandb_logged_in(wandb):
            raise MsaDistError(
                "log.report_to has wandb but W&B is not logged in: run `wandb login`, "
                "set WANDB_API_KEY, or set WANDB_MODE=offline"
            )

    if "mlflow" in report_to:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise MsaDistError(
                "log.report_to has mlflow but the mlflow package is missing: pip install 'msa-dist[mlflow]'"
            ) from None


def _wandb_logged_in(wandb) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(wandb.login(prompt=False, verify=False))  # reads the stored key; no network
    except Exception:  # a netrc or settings file it cannot read
        return False


class Tracker:
    """metrics.jsonl plus the sinks of `log.report_to`; only rank 0 has sinks (others write nothing)."""

    def __init__(self, jsonl, sinks: list):
        self.jsonl, self.sinks = jsonl, sinks

    @property
    def lines(self) -> int:
        return self.jsonl.lines

    def write(self, record: dict) -> None:
        self.jsonl.write(record)
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        self.jsonl.close()
        for sink in self.sinks:
            sink.close()


def open_tracker(cfg: Config, run_dir: Path, jsonl, is_main: bool, resume_step: int | None) -> Tracker:
    """Wrap the run's MetricsLog with the sinks `cfg.log.report_to` names (rank 0 only)."""
    check_report_to(cfg.log.report_to)
    if not is_main:
        return Tracker(jsonl, [])
    sinks: list = []
    try:
        if "tensorboard" in cfg.log.report_to:
            sinks.append(TensorBoardSink(cfg, Path(run_dir), resume_step))
        if "wandb" in cfg.log.report_to:
            sinks.append(WandbSink(cfg, Path(run_dir)))
        if "mlflow" in cfg.log.report_to:
            from msa_dist.engine.run.mlflow_sink import MlflowSink

            sinks.append(MlflowSink(cfg, Path(run_dir), resume_step))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return Tracker(jsonl, sinks)
