"""Early stopping (`train.early_stop`): the run ends when its val metric stops improving.

`EarlyStopper` decides for itself, the way `Checkpointer.should_save` does: the loop hands it each
evaluation's metrics and asks whether to stop. Its best value and its count of evaluations without
improvement are a stateful object the checkpointer saves and restores, so a resumed run stops at
the same step as an uninterrupted one. Every rank gets the same metrics (the confusion matrices
are summed across ranks before they are computed, engine/evaluation.py), so every rank takes the
same decision at the same epoch end and no broadcast is needed. A search (experiments/search.py)
adds its pruner as a `judge`, which broadcasts rank 0's decision itself.
"""

from __future__ import annotations

from collections.abc import Callable

from msa_dist.config.schema import EarlyStopConfig

LOWER_IS_BETTER = ("loss",)  # the val cross-entropy; accuracy and the F1s are better higher


class EarlyStopper:
    """Counts evaluations that do not beat the best by more than `min_delta`; stops at `patience`."""

    def __init__(self, cfg: EarlyStopConfig, judge: Callable[[dict, int], bool] | None = None):
        self.cfg, self.judge = cfg, judge  # judge: a search's pruner, asked after the count (the same on every rank)
        self.best: float | None = None
        self.bad_evals = 0  # evaluations in a row without improvement
        self.stopped_epoch: int | None = None
        self.by = "early_stop"

    def should_stop(self, metrics: dict | None, epoch: int) -> bool:
        """Take this evaluation's metrics (None: no evaluation this epoch) and say whether to stop now."""
        if metrics is None:
            return False
        if self.cfg.patience > 0:
            value = float(metrics[self.cfg.metric]) * (-1.0 if self.cfg.metric in LOWER_IS_BETTER else 1.0)
            if self.best is None or value > self.best + self.cfg.min_delta:
                self.best, self.bad_evals = value, 0
            else:
                self.bad_evals += 1
            if self.bad_evals >= self.cfg.patience:
                self.stopped_epoch = epoch
        if self.stopped_epoch is None and self.judge is not None and self.judge(metrics, epoch):
            self.stopped_epoch, self.by = epoch, "pruned"
        return self.stopped_epoch is not None

    def summary(self) -> dict:
        """What the run's summary and log say about the stop (`best` in the metric's own sign)."""
        cfg = self.cfg
        best = -self.best if self.best is not None and cfg.metric in LOWER_IS_BETTER else self.best
        stop = {"metric": cfg.metric, "best": best, "epoch": self.stopped_epoch, "patience": cfg.patience}
        return {**stop, "by": self.by}

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evals": self.bad_evals, "stopped_epoch": self.stopped_epoch, "by": self.by}

    def load_state_dict(self, state: dict) -> None:
        """Take a saved state; a checkpoint from before early stopping existed starts the count afresh."""
        self.best = state.get("best")
        self.bad_evals = int(state.get("bad_evals", 0))
        self.stopped_epoch = state.get("stopped_epoch")
        self.by = state.get("by", "early_stop")
