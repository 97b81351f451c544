"""The training loop. It reads top to bottom and never branches on backend or precision."""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import closing
from pathlib import Path

import torch

from msa_dist.common import atomic
from msa_dist.common.display import console, print_metrics, progress_bar
from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import LABELS
from msa_dist.config.schema import Config, save_config, to_dict
from msa_dist.data.format.manifest import load_manifest
from msa_dist.data.loading.loader import EvalLoader, StreamSpec
from msa_dist.data.loading.stream import TrainStream
from msa_dist.engine.backends import build_backend
from msa_dist.engine.checkpoint import files as ckpt
from msa_dist.engine.checkpoint.checkpointer import Checkpointer, TrainState, resume_point
from msa_dist.engine.early_stop import EarlyStopper
from msa_dist.engine.ema import WeightAverage
from msa_dist.engine.evaluation import run_split
from msa_dist.engine.losses import build_loss, build_objective
from msa_dist.engine.run.artifacts import build_run_model, prepare_tokenizer
from msa_dist.engine.run.place import RunPlace, open_place
from msa_dist.engine.run.provenance import write_run_info
from msa_dist.engine.run.rundir import die_with_launcher
from msa_dist.engine.run.tracking import DataWait, open_tracker
from msa_dist.engine.runtime import StopFlag, elastic_restart_count, read_env, resolve_global_batch
from msa_dist.engine.step import StepLedger, TrainStep


class MetricsLog:
    """RUN_DIR/metrics.jsonl, written by rank 0; `keep_lines` first cuts it back (a resumed run)."""

    def __init__(self, path: Path, enabled: bool, keep_lines: int | None):
        self.lines, self.handle = 0, None
        if not enabled:
            return
        if keep_lines is not None:  # written anew: a link planted there is replaced, never followed
            ours = path.is_file() and not path.is_symlink()
            atomic.write_atomic(path, "".join(path.read_text().splitlines(keepends=True)[:keep_lines] if ours else []))
        self.handle = atomic.open_append(path)  # a link there (keep_lines None) is one line
        self.lines = len(path.read_text().splitlines())

    def write(self, record: dict) -> None:
        if self.handle:  # a non-finite number (a skipped step's grad norm) is written as null: JSON has no NaN
            self.handle.write(json.dumps(_finite(record), allow_nan=False) + "\n")
            self.handle.flush()
            self.lines += 1

    def close(self) -> None:
        if self.handle:
            self.handle.close()


def _finite(value):
    """`value` with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def class_weights(shard_dir: str) -> torch.Tensor:
    """Inverse class frequencies of the train split; MsaDistError if it holds unlabelled samples."""
    train = load_manifest(shard_dir)["splits"].get("train", {})
    unlabelled = train.get("samples", 0) - train.get("labelled", 0)
    if unlabelled or "class_counts" not in train:
        raise MsaDistError(
            f"the train split of {shard_dir} has {unlabelled} of {train.get('samples', 0)} samples "
            "without a label (tag null): training needs a label for each; pack unlabelled pairs "
            "into another split (`shards build --labels FILE --split NAME`)"
        )
    counts = train["class_counts"]
    n = torch.tensor([max(counts.get(name, 0), 1) for name in LABELS], dtype=torch.float)
    return n.sum() / (len(LABELS) * n)


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: str | None = None,
    overwrite: bool = False,
    trust_checkpoint: bool = False,
    scratch: str | None = None,
    judge=None,
) -> dict:
    """Train, evaluate every epoch, keep `latest` and `best`; returns a summary.

    A new run (no `resume`) refuses a run dir holding checkpoints unless `overwrite`;
    `trust_checkpoint` accepts a DeepSpeed checkpoint not saved here (checkpoint/trust.py). A run
    dir on a store (`s3://...`) works in `scratch` (run/place.py) and uploads to the store.
    `judge(metrics, epoch) -> stop?`, asked at each evaluation, is a search's pruner (early_stop.py)."""
    if resume and overwrite:
        raise MsaDistError("--resume continues the run in the run dir and --overwrite deletes it: give one of them")
    die_with_launcher()  # a worker does not outlive its torchrun agent
    env = read_env(cfg.backend.device)
    cfg = resolve_global_batch(cfg, env.world_size)  # accumulation follows the world size when the batch is fixed
    if resume is None and elastic_restart_count() > 0:
        resume = "auto"  # torchrun restarted the group after a failure: continue from `latest`
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.autograd.set_detect_anomaly(cfg.train.detect_anomaly)
    place = open_place(run_dir, scratch, cfg.checkpoint, env)  # a store that denies writes: one line now
    run_dir = place.local
    backend = build_backend(cfg.backend, env, join=False)
    with place.lock():  # one live writer per run dir: rank 0 holds it
        if not resume:
            place.claim(overwrite)
        place.fetch(resume)  # a store: its newest complete checkpoint into scratch
        start = resume_point(run_dir / "checkpoints", resume, trust_checkpoint)
        if start:
            backend.check_resume(ckpt.read_client(start).get("layout", {}), start)  # fail fast, in one line
        elif resume and env.is_main:
            console.print(f"--resume {resume}: no checkpoint in {run_dir / 'checkpoints'} yet, starting at step 0")
        backend.init_process_group()  # joins once per command; engine.group leaves it when the command ends
        with StopFlag() as stop:
            summary = _train(cfg, place, resume, start, env, backend, stop, judge)
        place.upload_outputs()
        return {**summary, "run_dir": place.name, "local_run_dir": str(run_dir)}


def _train(
    cfg: Config, place: RunPlace, resume: str | None, start: Path | None, env, backend, stop: StopFlag, judge=None
) -> dict:
    """Epochs of `train_step`; the ledger reads its numbers a step late; log, save, validate.

    Every rank folds the same steps at the same points (`StepLedger`), so all stop together.
    """
    tcfg, run_dir = cfg.train, place.local
    tokenizer, stream, val_loader = _setup(cfg, place, start, env, backend)
    state, accum = TrainState(), tcfg.grad_accum_steps
    ema, early_stop = WeightAverage(backend.module, tcfg.ema_decay), EarlyStopper(tcfg.early_stop, judge)
    checkpointer = Checkpointer(
        backend,
        run_dir / "checkpoints",
        cfg.checkpoint,
        tcfg.best_metric,
        ema,
        state,
        states={"data": stream, "early_stop": early_stop},
        static={"config": to_dict(cfg), "layout": _layout(cfg, env, backend)},
        place=place,
    )
    if start is not None:
        _restore(checkpointer, start, stream, env)
    log = _open_log(cfg, run_dir, env, state, start, resume)
    hard_loss = build_loss(tcfg, class_weights(cfg.data.shards).to(env.device))
    loss_fn, targets = build_objective(tcfg, hard_loss, cfg.data.shards)  # with train.teacher: distillation
    train_step = TrainStep(backend, loss_fn, cfg.model.modality, tcfg.mixup_alpha, targets)
    ledger = StepLedger(state, tcfg.max_nonfinite_steps)
    summary = {
        "run_dir": str(run_dir),
        "status": "finished",
        "global_batch_size": tcfg.batch_size * accum * env.world_size,
    }
    progress, waits = progress_bar(cfg.log.progress and env.is_main), DataWait()
    with progress, closing(log), closing(stream), closing(val_loader):
        while state.epoch < tcfg.epochs and early_stop.stopped_epoch is None:  # a stopped run stays stopped
            task = progress.add_task(
                f"epoch {state.epoch + 1}/{tcfg.epochs}",
                total=stream.batches_per_epoch,
                completed=stream.batches_done,
                loss=float("nan"),
                speed=0.0,
            )
            ledger.start_epoch(state.loss_window if stream.batches_done else None)  # mid-epoch resume: same window
            t0, seen = time.perf_counter(), 0
            backend.model.train()
            for batch in waits.timed(stream.epoch(state.epoch)):
                result = train_step(batch, stream.batches_done % accum == 0, stop.requested, stream.corrupt_samples)
                if result is None:
                    continue  # an accumulation micro step
                state.step, seen = state.step + 1, seen + result.samples * env.world_size
                ema.update(state.step)
                log_now = state.step % cfg.log.every_steps == 0
                ledger.add(result, settle=log_now)  # the step before this one; this one too at a log step
                speed = seen / max(time.perf_counter() - t0, 1e-9)
                progress.update(task, completed=stream.batches_done, speed=speed, loss=ledger.window_mean())
                if log_now:
                    record = {"epoch": state.epoch, "step": state.step, "lr": backend.lr(), "samples_per_s": speed}
                    log.write({"type": "train", **record, "data_wait": waits.take(), **ledger.take_record()})
                if checkpointer.should_save(stop=ledger.stop):
                    ledger.settle()
                    _save(checkpointer, state, log)
                if ledger.stop:
                    if env.is_main:
                        console.print(f"SIGTERM: saved a checkpoint at step {state.step}; resume with --resume auto")
                    return {**summary, "status": "preempted", "step": state.step}
            ledger.settle()
            state.epoch += 1
            with ema.averaged():
                summary["val"] = metrics = _validate(cfg, backend, tokenizer, env, state, log, val_loader)
            if early_stop.should_stop(metrics, state.epoch):  # before the save, which holds its count
                log.write({"type": "early_stop", "epoch": state.epoch, "step": state.step, **early_stop.summary()})
            _save(checkpointer, state, log, metrics)
    if early_stop.stopped_epoch is not None:
        summary["early_stop"] = early_stop.summary()
    return _finish(summary, state, stream, env, backend, state.epoch)


def _open_log(cfg: Config, run_dir: Path, env, state: TrainState, start: Path | None, resume: str | None):
    """metrics.jsonl and the trackers. A resumed run cuts the log back to its checkpoint; a new run,
    or a restart before any checkpoint, starts it afresh."""
    log = MetricsLog(run_dir / "metrics.jsonl", env.is_main, state.log_lines if start else 0)
    log = open_tracker(cfg, run_dir, log, env.is_main, state.step if start else (0 if resume else None))
    if start is not None:
        record = {"epoch": state.epoch, "step": state.step, "from": start.name, "world_size": env.world_size}
        log.write({"type": "resume", **record})
    return log


def _finish(summary: dict, state: TrainState, stream: TrainStream, env, backend, epochs: int) -> dict:
    """The finished run's summary: its last val metrics printed, unreadable samples summed over ranks."""
    if env.is_main and summary.get("val"):
        print_metrics(summary["val"], f"val metrics after {epochs} epochs")
        stop = summary.get("early_stop") or {}
        if stop.get("by") == "early_stop":
            console.print(f"early stop: val {stop['metric']} did not improve for {stop['patience']} evaluations")
    corrupt = int(backend.all_reduce_sum(torch.tensor([float(stream.corrupt_samples)], device=env.device))[0])
    if env.is_main and corrupt:
        console.print(f"[yellow]skipped {corrupt} unreadable samples[/] (warnings above name them)")
    return {**summary, "step": state.step, "nonfinite_total": state.nonfinite_total, "corrupt_samples": corrupt}


def _layout(cfg: Config, env, backend) -> dict:
    """What a resume checks the saved run against (world size, backend, batch, ...)."""
    return {
        "backend": backend.name,
        "checkpoint_format": backend.checkpoint_format,
        "world_size": env.world_size,
        "workers": cfg.data.workers,
        "batch_size": cfg.train.batch_size,
        "grad_accum_steps": cfg.train.grad_accum_steps,
        "zero_stage": cfg.backend.zero_stage,
        "precision": cfg.backend.precision,
    }


def _restore(checkpointer: Checkpointer, start: Path, stream: TrainStream, env) -> None:
    # the stream decides whether its saved position carries over to this layout (and warns if not)
    checkpointer.restore(start)
    state = checkpointer.train_state
    if env.is_main:
        console.print(
            f"resumed from {start} (epoch {state.epoch}, step {state.step}, "
            f"batch {stream.batches_done} of {stream.batches_per_epoch})"
        )


def _save(checkpointer: Checkpointer, state: TrainState, log, metrics: dict | None = None) -> None:
    state.log_lines = log.lines  # a resume cuts metrics.jsonl back to what this checkpoint had seen
    checkpointer.save(metrics)


def _setup(cfg: Config, place: RunPlace, start: Path | None, env, backend) -> tuple:
    """Run dir, tokenizer, model (from `train.init_from` for a new run), backend; the training stream."""
    tcfg, run_dir = cfg.train, place.local
    seed_everything(tcfg.seed)
    if env.is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if tcfg.init_from and start is None:
            ckpt.copy_source_tokenizer(tcfg.init_from, run_dir)
    backend.barrier()
    write_run_info(cfg, run_dir, env, backend.name)  # all ranks: it gathers the host names
    tokenizer = prepare_tokenizer(cfg, run_dir, backend, share=place.share)
    model = build_run_model(cfg, run_dir, tokenizer, backend)
    if tcfg.init_from and start is None:
        ckpt.load_init_weights(model, tcfg.init_from)

    spec = StreamSpec(
        "train", True, tcfg.batch_size, env.rank, env.world_size, tcfg.seed, grad_accum_steps=tcfg.grad_accum_steps
    )
    cap = tcfg.max_steps_per_epoch * tcfg.grad_accum_steps if tcfg.max_steps_per_epoch else None
    # The val loader's workers are forked now, before the training stream's threads exist, and serve
    # every epoch's validation: a worker forked among those threads can deadlock at start.
    val_loader = EvalLoader(
        cfg.data,
        cfg.data.shards,
        StreamSpec("val", False, tcfg.batch_size, env.rank, env.world_size, tcfg.seed),
        tokenizer,
    )
    stream = TrainStream(
        cfg.data,
        cfg.data.shards,
        spec,
        tokenizer,
        pin_memory=env.device.type == "cuda",
        epochs=tcfg.epochs,
        batches_per_epoch=cap,
    )
    steps_per_epoch = stream.batches_per_epoch // tcfg.grad_accum_steps
    backend.prepare(model, cfg.optim, steps_per_epoch * tcfg.epochs, tcfg.grad_accum_steps, tcfg.batch_size)
    if env.is_main:
        console.print(
            f"[bold]msa-dist train[/] backend={backend.name} precision={cfg.backend.precision} "
            f"world: {env.describe()} | global batch {tcfg.batch_size * tcfg.grad_accum_steps * env.world_size}"
            f" = {tcfg.batch_size} micro x {tcfg.grad_accum_steps} accum x {env.world_size} ranks | "
            f"{steps_per_epoch} steps/epoch x {tcfg.epochs} epochs | run dir {place.name}"
        )
    return tokenizer, stream, val_loader


def _validate(cfg: Config, backend, tokenizer, env, state: TrainState, log, val_loader: EvalLoader) -> dict | None:
    """Val metrics when this epoch is due (the split dealt across ranks, confusion matrices summed), logged."""
    if state.epoch % cfg.train.eval_every_epochs and state.epoch != cfg.train.epochs:
        return None
    backend.sync_buffers()  # every rank evaluates the model that is saved next
    metrics, _ = run_split(
        cfg,
        backend.model,
        tokenizer,
        env,
        backend,
        "val",
        cfg.train.batch_size,
        autocast=backend.autocast(),
        loader=val_loader,
    )
    if metrics:
        log.write({"type": "eval", "epoch": state.epoch, "step": state.step, "split": "val", **metrics})
        if env.is_main:
            console.print(
                f"epoch {state.epoch}: val accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f}"
            )
    return metrics
