"""When and what the trainer saves, and where it resumes from.

`Checkpointer` decides when a save is due: every `checkpoint.every_steps` optimizer steps, at
each epoch end (then also `best/` by `train.best_metric`) and on a stop request; it keeps the last
`checkpoint.keep_last` step directories. Each save holds the backend's state, every rank's RNG,
the `TrainState` below and the state of each stateful object it was given (the data stream's
position: `TrainStream.state_dict()`); `files.py` writes it
atomically, so a kill during a save leaves the previous one usable. With an EMA of the weights
(`engine/ema.py`), `model.pt` holds the average and the client state the trained weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import CheckpointConfig
from msa_dist.engine.backends import format_folder
from msa_dist.engine.checkpoint import files as ckpt
from msa_dist.engine.checkpoint import trust as checkpoint_trust
from msa_dist.engine.ema import WeightAverage


@dataclass
class TrainState:
    """Everything besides model, optimizer and data position that an exact resume needs."""

    epoch: int = 0
    step: int = 0  # optimizer steps done (the data position is the stream's own state: client["data"])
    best_value: float | None = None
    nonfinite_streak: int = 0
    nonfinite_total: int = 0
    log_lines: int | None = None  # lines of metrics.jsonl when saved: a resume cuts the file back to them
    loss_window: list | None = None  # [sum, count] of losses since the last train record: a resume logs the same

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, saved: dict) -> None:
        """Take the saved values in place (keys this version does not know are ignored)."""
        for key, value in saved.items():
            if key in self.__dataclass_fields__:
                setattr(self, key, value)


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Checkpointer:
    """Decides when the run saves (`should_save`) and saves what it was given: the train state,
    the stateful objects (`states`, e.g. {"data": stream}: their `state_dict()` at save time) and
    fixed facts (`static`: config, layout), with the backend's state and the EMA."""

    def __init__(
        self,
        backend,
        root: Path,
        cfg: CheckpointConfig,
        best_metric: str,
        ema: WeightAverage,
        train_state: TrainState,
        states: dict[str, Stateful],
        static: dict,
        place=None,
    ):
        self.backend, self.root, self.cfg, self.best_metric, self.ema = backend, Path(root), cfg, best_metric, ema
        self.train_state, self.states, self.static = train_state, states, static
        self.place = place  # a run dir on a store (run/place.py): each save is uploaded and committed
        self.private = place is not None and place.store is not None  # each rank saves into its own scratch

    def should_save(self, stop: bool = False) -> bool:
        """A save after this optimizer step: a stop was requested, or `checkpoint.every_steps` is due."""
        step = self.train_state.step
        return stop or (bool(self.cfg.every_steps) and step % self.cfg.every_steps == 0)

    def save(self, metrics: dict | None = None) -> Path:
        """Save at the current step; with `metrics` (an epoch end), also `best/` if they beat the best so far."""
        state = self.train_state
        better = metrics is not None and (state.best_value is None or metrics[self.best_metric] > state.best_value)
        if better:
            state.best_value = metrics[self.best_metric]
        with self.ema.averaged():  # model.pt: the weights evaluated; the client state: the trained ones
            client = {
                "train_state": state.state_dict(),
                **{k: v.state_dict() for k, v in self.states.items()},
                **self.static,
                "ema": self.ema.state_dict(),
            }
            options = {"private": True} if self.private else {}  # a run dir on a store only
            step_dir = ckpt.save_checkpoint(self.backend, self.root, state.step, client, self.cfg.keep_last, **options)
        if better:
            ckpt.save_best(self.backend, self.root, step_dir, metrics)
        if self.place is not None:
            self.place.publish(self.backend, step_dir, state.step, best=better)
        return step_dir

    def restore(self, start: Path) -> None:
        """Restore the backend's state, the EMA, this rank's RNG, the train state and every stateful
        object from `start`, in place."""
        client = ckpt.load_checkpoint(self.backend, start)
        self.ema.restore(client.get("ema") or {}, str(start))
        self.train_state.load_state_dict(client["train_state"])
        for name, obj in self.states.items():
            # a checkpoint older than the stream's own state holds only the epoch: its start
            obj.load_state_dict(client.get(name) or {"epoch": self.train_state.epoch, "samples_done": 0})


def resume_point(ckpt_root: Path, resume: str | None, trust: bool = False) -> Path | None:
    """The step directory `--resume` names: `auto` is the latest complete one that loads (None if
    there is none; an unreadable one falls back to the one before, with a warning). A named
    directory must load as it is. DeepSpeed unpickles its own files (DCP its index), so such a checkpoint, on
    either branch, needs to have been saved here (trust.py) or `trust` (--trust-checkpoint)."""
    if not resume:
        return None
    if resume == "auto":
        path = ckpt.latest_checkpoint(ckpt_root, check=ckpt.check_readable)
    else:
        path = Path(resume)
        if not path.is_dir():
            raise MsaDistError(f"--resume {resume}: no such checkpoint directory (use 'auto' or a step-NNNNNNN dir)")
        ckpt.check_readable(path)  # one line if it is torn, truncated or carries a payload
    folder = format_folder(path) if path is not None else None
    if folder:
        checkpoint_trust.require_made_here(path, folder, trust, f"--resume {resume}")
    return path
