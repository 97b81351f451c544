"""When and what the trainer saves, and where it resumes from.

`Checkpointer` saves every `checkpoint.every_steps` optimizer steps, at each epoch end (then
also `best/` by `train.best_metric`) and on a stop request; keeps the last `checkpoint.keep_last`
step directories. Each save holds the backend's state, every rank's RNG, the `TrainState` below
and the data stream's position (`TrainStream.state_dict()`); `checkpoint.py` writes it
atomically, so a kill during a save leaves the previous one usable. With an EMA of the weights
(`engine/ema.py`), `model.pt` holds the average and the client state the trained weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from msa_dist.config.schema import CheckpointConfig
from msa_dist.engine.checkpoint import files as ckpt
from msa_dist.engine.ema import WeightAverage
from msa_dist.common.errors import MsaDistError


@dataclass
class TrainState:
    """Everything besides model, optimizer and data position that an exact resume needs."""
    epoch: int = 0
    step: int = 0  # optimizer steps done (the data position is the stream's own state: client["data"])
    best_value: Optional[float] = None
    nonfinite_streak: int = 0
    nonfinite_total: int = 0
    log_lines: Optional[int] = None  # lines of metrics.jsonl when saved: a resume cuts the file back to them
    loss_window: Optional[list] = None  # [sum, count] of losses since the last train record: a resume logs the same

    @classmethod
    def from_client(cls, client: dict) -> "TrainState":
        saved = client["train_state"]
        return cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})


class Checkpointer:
    """Saves `client()` (train state, data position, config, layout) with the backend's state."""

    def __init__(self, backend, root: Path, cfg: CheckpointConfig, best_metric: str, client: Callable[[], dict],
                 ema: WeightAverage):
        self.backend, self.root, self.cfg = backend, Path(root), cfg
        self.best_metric, self.client, self.ema = best_metric, client, ema

    def due(self, step: int) -> bool:
        """A periodic save after this optimizer step."""
        return bool(self.cfg.every_steps) and step % self.cfg.every_steps == 0

    def save(self, state: TrainState, metrics: Optional[dict] = None) -> Path:
        """Save at `state.step`; with `metrics` (an epoch end), also `best/` if they beat the best so far."""
        better = metrics is not None and (state.best_value is None or metrics[self.best_metric] > state.best_value)
        if better:
            state.best_value = metrics[self.best_metric]
        with self.ema.averaged():  # model.pt: the weights evaluated; the client state: the trained ones
            client = {**self.client(), "ema": self.ema.state_dict()}
            step_dir = ckpt.save_checkpoint(self.backend, self.root, state.step, client, self.cfg.keep_last)
        if better:
            ckpt.save_best(self.backend, self.root, step_dir, metrics)
        return step_dir

    def load(self, start: Path) -> dict:
        """Restore the backend's state, the EMA and this rank's RNG from `start`; returns the client state."""
        client = ckpt.load_checkpoint(self.backend, start)
        self.ema.restore(client.get("ema") or {}, str(start))
        return client


def resume_point(ckpt_root: Path, resume: Optional[str], trust: bool = False) -> Optional[Path]:
    """The step directory `--resume` names: `auto` is the latest complete one that loads (None if
    there is none; an unreadable one falls back to the one before, with a warning). A named
    directory must load as it is. DeepSpeed unpickles its own files, so a DeepSpeed checkpoint from
    outside this run's checkpoints/ needs `trust` (--trust-checkpoint)."""
    if not resume:
        return None
    if resume == "auto":
        return ckpt.latest_checkpoint(ckpt_root, check=ckpt.check_readable)
    path = Path(resume)
    if not path.is_dir():
        raise MsaDistError(f"--resume {resume}: no such checkpoint directory (use 'auto' or a step-NNNNNNN dir)")
    ckpt.check_readable(path)  # one line if it is torn, truncated or carries a payload
    inside = path.resolve().parent == Path(ckpt_root).resolve()
    if (path / "deepspeed").is_dir() and not inside and not trust:
        raise MsaDistError(f"--resume {resume} is a DeepSpeed checkpoint from outside {ckpt_root}, and DeepSpeed "
                           "unpickles its files (which can run code): pass --trust-checkpoint if you made it "
                           "or trust who did")
    return path


def client_state(state: TrainState, stream, cfg_dict: dict, layout: dict) -> dict:
    """What a checkpoint stores besides the backend's state."""
    return {"train_state": asdict(state), "data": stream.state_dict(), "config": cfg_dict, "layout": layout}
