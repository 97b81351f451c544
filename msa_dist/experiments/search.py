"""`msa-dist search`: a hyper-parameter search on Optuna (TPE sampling, median or hyperband pruning).

Each trial is one training run in RUN_DIR/trial-NNNN (with `cv`: a k-fold CV there, on one fold
set in RUN_DIR/folds shared by all trials). The objective is the best val metric over the run's
evaluations, pruned between epochs; with `cv` the mean of the folds' out-of-fold metric (each fold's
last epoch, as `msa-dist cv` scores it), pruned between folds on the running mean.

The study lives in RUN_DIR/study.db (SQLite), so a killed search resumes: finished and pruned
trials count, a trial the kill left running is marked failed and its parameters are tried again
from scratch, and the search goes on until `n_trials` have finished or been pruned.

Under torchrun rank 0 alone owns the study: it samples each trial's parameters and decides each
pruning, and broadcasts both; every rank trains every trial (`train` is collective).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed

from msa_dist.common.display import console
from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import Config
from msa_dist.engine.backends.base import join_process_group
from msa_dist.engine.runtime import read_env
from msa_dist.experiments.points import is_main_process
from msa_dist.experiments.search_space import Dimension, apply_params

STUDY_FILE = "study.db"
STUDY_NAME = "msa-dist-search"
PRUNERS = ("median", "hyperband", "none")
METRICS = ("accuracy", "macro_f1", "weighted_f1")


def _share(value: Any, cfg: Config) -> Any:
    """Rank 0's `value` on every rank (unchanged in a single process)."""
    env = read_env(cfg.backend.device)
    if env.world_size == 1:
        return value
    join_process_group(env, cfg.backend.timeout_s)  # the group train() joins (once per command)
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def open_study(run_dir: Path, pruner: str, steps: int, seed: int):
    """The study in RUN_DIR/study.db (created, or loaded to go on), maximising the metric."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if pruner == "median":
        chosen = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    elif pruner == "hyperband":
        chosen = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(steps, 1))
    else:
        chosen = optuna.pruners.NopPruner()
    return optuna.create_study(
        study_name=STUDY_NAME,
        storage=f"sqlite:///{(run_dir / STUDY_FILE).resolve()}",
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=chosen,
    )


def requeue_killed(study) -> list[int]:
    """Trials a kill left running: marked failed, their parameters queued again. Their numbers."""
    from optuna.trial import TrialState

    killed = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in killed:
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return [t.number for t in killed]


def finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


class Pruning:
    """A trial's intermediate values: rank 0 reports them to Optuna and asks its pruner; every rank
    gets the same answer (`_share`)."""

    def __init__(self, trial, metric: str, cfg: Config):
        self.trial, self.metric, self.cfg = trial, metric, cfg

    def __call__(self, value: float, step: int) -> bool:
        prune = False
        if self.trial is not None:  # rank 0
            self.trial.report(float(value), step)
            prune = self.trial.should_prune()
        return bool(_share(prune, self.cfg))

    def on_eval(self, metrics: dict, epoch: int) -> bool:
        """The trainer's judge: this epoch's val metric."""
        return self(metrics[self.metric], epoch)


def _run_trial(cfg: Config, trial_dir: Path, pruning: Pruning, train_fn: Callable, cv: dict | None) -> dict:
    """Train one trial; {"status": finished | pruned | preempted, "value": objective (rank 0)}."""
    main = is_main_process()
    if main and trial_dir.exists():
        shutil.rmtree(trial_dir)  # a retried trial starts afresh
    _share(None, cfg)  # no rank goes on before it is gone
    if cv:
        from msa_dist.experiments.search_cv import run_cv_trial

        return run_cv_trial(cfg, trial_dir, pruning, train_fn, cv)
    summary = train_fn(cfg, trial_dir, judge=pruning.on_eval)
    if summary.get("status") != "finished":
        return {"status": "preempted"}
    if (summary.get("early_stop") or {}).get("by") == "pruned":
        return {"status": "pruned"}
    value = None
    if main:
        from msa_dist.experiments.report import read_records

        value = max((r[pruning.metric] for r in read_records(trial_dir)[1]), default=None)
    return {"status": "finished", "value": value}


def run_search(
    cfg: Config,
    space: list[Dimension],
    run_dir: str | Path,
    n_trials: int,
    metric: str | None = None,
    pruner: str = "median",
    cv_folds: int = 0,
    seed: int = 0,
    train_fn: Callable | None = None,
) -> dict | None:
    """Run trials until `n_trials` have finished or been pruned; rank 0 writes the report and returns it."""
    if train_fn is None:
        from msa_dist.engine.trainer import train as train_fn
    metric = metric or cfg.train.best_metric
    allowed = METRICS[:2] if cv_folds else METRICS
    if metric not in allowed:
        raise MsaDistError(f"--metric must be one of {', '.join(allowed)}; got {metric!r}")
    if pruner not in PRUNERS:
        raise MsaDistError(f"--pruner must be one of {', '.join(PRUNERS)}; got {pruner!r}")
    if n_trials < 1:
        raise MsaDistError(f"--trials must be at least 1; got {n_trials}")
    run_dir, main = Path(run_dir), is_main_process()
    study, cv = None, None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        study = open_study(run_dir, pruner, cv_folds or cfg.train.epochs, seed)
        retried = requeue_killed(study)
        console.print(
            f"search: {finished(study)}/{n_trials} trials done in {run_dir / STUDY_FILE}"
            + (f"; trial(s) {retried} were cut short and are tried again" if retried else "")
        )
    if cv_folds:
        from msa_dist.experiments.search_cv import prepare_folds

        cv = prepare_folds(cfg, run_dir, cv_folds, main)
    complete = _trials(cfg, space, run_dir, n_trials, metric, study, cv, train_fn)
    if not main:
        return None
    from msa_dist.experiments.search_report import write_search_report

    return write_search_report(study, cfg, run_dir, metric, n_trials, complete, cv_folds)


def _trials(cfg, space, run_dir, n_trials, metric, study, cv, train_fn) -> bool:
    """The ask-train-tell loop; False if a trial was preempted (the search is then incomplete)."""
    failures = 0
    while True:
        ask = None
        if study is not None:  # rank 0 samples
            ask = {"done": finished(study) >= n_trials}
            if not ask["done"]:
                trial = study.ask()
                ask.update(number=trial.number, params={d.key: d.suggest(trial) for d in space})
        ask = _share(ask, cfg)
        if ask["done"]:
            return True
        try:
            trial_cfg = apply_params(cfg, ask["params"])
        except MsaDistError as exc:  # the same on every rank: a combination the schema refuses
            failures += 1
            if study is not None:
                console.print(f"[yellow]trial {ask['number']}: {exc}; skipped[/]")
                study.tell(trial, state=_state("FAIL"))
            if failures > n_trials:
                raise MsaDistError(f"search: {failures} sampled configs were refused by the schema") from None
            continue
        if study is not None:
            console.print(f"[bold]trial {ask['number']}[/] {ask['params']}")
        start, pruning = time.perf_counter(), Pruning(trial if study is not None else None, metric, trial_cfg)
        result = _run_trial(trial_cfg, run_dir / f"trial-{ask['number']:04d}", pruning, train_fn, cv)
        if result["status"] == "preempted":
            if study is not None:
                console.print(f"[yellow]trial {ask['number']} was preempted: run the same command again to go on[/]")
            return False
        if study is not None:
            _tell(study, trial, result, round(time.perf_counter() - start, 1))


def _tell(study, trial, result: dict, seconds: float) -> None:
    """The trial's outcome into the study: its objective, pruned, or failed (a run without evaluations)."""
    trial.set_user_attr("train_seconds", seconds)
    if result["status"] == "pruned":
        study.tell(trial, state=_state("PRUNED"))
    elif result.get("value") is None:
        study.tell(trial, state=_state("FAIL"))
    else:
        study.tell(trial, result["value"])


def _state(name: str):
    from optuna.trial import TrialState

    return getattr(TrialState, name)
