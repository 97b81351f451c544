"""The training loop. It reads top to bottom and never branches on backend or precision."""
from __future__ import annotations

import itertools
import json
import random
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from msa_dist.config import Config, save_config, to_dict
from msa_dist.data.loader import StreamSpec, batches_per_rank, build_loader, split_size
from msa_dist.data.manifest import load_manifest
from msa_dist.engine import checkpoint as ckpt
from msa_dist.engine.artifacts import build_run_model, prepare_tokenizer
from msa_dist.engine.backends import build_backend
from msa_dist.engine.batch import model_inputs
from msa_dist.engine.display import console, print_metrics, progress_bar
from msa_dist.engine.evaluation import run_split
from msa_dist.engine.losses import build_loss
from msa_dist.engine.runtime import read_env
from msa_dist.errors import MsaDistError
from msa_dist.labels import LABELS


@dataclass
class TrainState:
    """Everything besides model/optimizer that an exact resume needs."""
    epoch: int = 0
    step: int = 0  # optimizer steps done
    batch_in_epoch: int = 0  # micro batches of `epoch` already consumed (the data position)
    best_value: Optional[float] = None
    nonfinite_streak: int = 0
    nonfinite_total: int = 0


class _StopFlag:
    """Set by SIGTERM (how SLURM preempts); checked at step boundaries on every rank."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        self.requested = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def class_weights(shard_dir: str) -> torch.Tensor:
    counts = load_manifest(shard_dir)["splits"]["train"]["class_counts"]
    n = torch.tensor([max(counts.get(name, 0), 1) for name in LABELS], dtype=torch.float)
    return n.sum() / (len(LABELS) * n)


def train(cfg: Config, run_dir: str | Path, resume: Optional[str] = None) -> dict:
    """Train, evaluate every epoch, keep `latest` and `best`; returns a summary."""
    run_dir = Path(run_dir)
    env = read_env(cfg.backend.device)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.autograd.set_detect_anomaly(cfg.train.detect_anomaly)
    backend = build_backend(cfg.backend, env)
    try:
        return _train(cfg, run_dir, resume, env, backend)
    finally:
        backend.close()


def _train(cfg: Config, run_dir: Path, resume: Optional[str], env, backend) -> dict:
    seed_everything(cfg.train.seed)
    ckpt_root = run_dir / "checkpoints"
    if env.is_main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    backend.barrier()
    tokenizer = prepare_tokenizer(cfg, run_dir, backend)
    model = build_run_model(cfg, run_dir, tokenizer, backend)

    tcfg = cfg.train
    spec0 = StreamSpec("train", True, tcfg.batch_size, env.rank, env.world_size, tcfg.seed)
    micro_per_epoch = batches_per_rank(split_size(cfg.data.shards, "train"), spec0, cfg.data.workers)
    steps_per_epoch = micro_per_epoch // tcfg.grad_accum_steps
    if tcfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tcfg.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise MsaDistError(f"the train split is too small for global batch {tcfg.batch_size}x{tcfg.grad_accum_steps}"
                           f"x{env.world_size} with {max(cfg.data.workers, 1)} workers per rank: lower train.batch_size or data.workers")
    micro_per_epoch = steps_per_epoch * tcfg.grad_accum_steps
    backend.prepare(model, cfg.optim, steps_per_epoch * tcfg.epochs, tcfg.grad_accum_steps, tcfg.batch_size)
    global_batch = tcfg.batch_size * tcfg.grad_accum_steps * env.world_size
    if env.is_main:
        console.print(f"[bold]msa-dist train[/] backend={backend.name} precision={cfg.backend.precision} "
                      f"world={env.world_size} device={env.device.type} | global batch {global_batch} = "
                      f"{tcfg.batch_size} micro x {tcfg.grad_accum_steps} accum x {env.world_size} ranks | "
                      f"{steps_per_epoch} steps/epoch x {tcfg.epochs} epochs | run dir {run_dir}")

    state = TrainState()
    start = _resume_point(ckpt_root, resume)
    if start is not None:
        state = TrainState(**ckpt.load_checkpoint(backend, start)["train_state"])
        if env.is_main:
            console.print(f"resumed from {start} (epoch {state.epoch}, step {state.step}, batch {state.batch_in_epoch})")

    loss_fn = build_loss(tcfg, class_weights(cfg.data.shards).to(env.device))
    stop = _StopFlag()
    log_file = (run_dir / "metrics.jsonl").open("a") if env.is_main else None
    summary = {"run_dir": str(run_dir), "status": "finished", "global_batch_size": global_batch}

    def save(metrics: Optional[dict] = None) -> Path:
        client = {"train_state": asdict(state), "config": to_dict(cfg)}
        step_dir = ckpt.save_checkpoint(backend, ckpt_root, state.step, client, cfg.checkpoint.keep_last)
        if metrics is not None and _is_better(metrics[tcfg.best_metric], state.best_value):
            state.best_value = metrics[tcfg.best_metric]
            ckpt.save_best(backend, ckpt_root, step_dir, metrics)
        return step_dir

    with progress_bar(cfg.log.progress and env.is_main) as progress:
        while state.epoch < tcfg.epochs:
            task = progress.add_task(f"epoch {state.epoch + 1}/{tcfg.epochs}", total=micro_per_epoch,
                                     completed=state.batch_in_epoch, loss=float("nan"), speed=0.0)
            spec = StreamSpec("train", True, tcfg.batch_size, env.rank, env.world_size, tcfg.seed,
                              state.epoch, skip_batches=state.batch_in_epoch)
            loader = build_loader(cfg.data, cfg.data.shards, spec, tokenizer, pin_memory=env.device.type == "cuda")
            t0, seen, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
            model_ = backend.model
            model_.train()
            for batch in itertools.islice(loader, micro_per_epoch - state.batch_in_epoch):
                is_boundary = (state.batch_in_epoch + 1) % tcfg.grad_accum_steps == 0
                with backend.accumulate(is_boundary):
                    with backend.autocast():
                        logits = model_(**model_inputs(batch, env.device, cfg.model.modality))
                    loss = loss_fn(logits.float(), batch["labels"].to(env.device))
                    # One small all-reduce per micro step: every rank agrees to skip a non-finite
                    # loss and to stop on SIGTERM, so no rank waits in a collective alone.
                    flags = backend.all_reduce_sum(torch.tensor(
                        [float(not torch.isfinite(loss)), float(stop.requested)], device=env.device))
                    if flags[0] == 0:
                        backend.backward(loss)
                grad_norm = backend.step(is_boundary)
                state.batch_in_epoch += 1
                seen += len(batch["keys"]) * env.world_size
                if flags[0] > 0:
                    state.nonfinite_streak += 1
                    state.nonfinite_total += 1
                    if state.nonfinite_streak >= tcfg.max_nonfinite_steps:
                        raise MsaDistError(f"{state.nonfinite_streak} non-finite losses in a row at step {state.step}: "
                                           "lower optim.lr, use backend.precision=bf16 or fp32, or check the data")
                else:
                    state.nonfinite_streak = 0
                    loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
                if is_boundary:
                    state.step += 1
                    speed = seen / max(time.perf_counter() - t0, 1e-9)
                    progress.update(task, completed=state.batch_in_epoch, loss=loss_sum / max(loss_n, 1), speed=speed)
                    if log_file and state.step % cfg.log.every_steps == 0:
                        _log(log_file, {"type": "train", "epoch": state.epoch, "step": state.step,
                                        "loss": loss_sum / max(loss_n, 1), "lr": backend.lr(), "grad_norm": grad_norm,
                                        "samples_per_s": speed, "nonfinite_total": state.nonfinite_total})
                        loss_sum, loss_n = 0.0, 0
                    if cfg.checkpoint.every_steps and state.step % cfg.checkpoint.every_steps == 0:
                        save()
                    if flags[1] > 0:
                        save()
                        summary["status"] = "preempted"
                        if env.is_main:
                            console.print(f"SIGTERM: saved a checkpoint at step {state.step}; resume with --resume auto")
                        return summary
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            metrics = None
            if state.epoch % tcfg.eval_every_epochs == 0 or state.epoch == tcfg.epochs:
                metrics, _ = run_split(cfg, backend.model, tokenizer, env, backend, "val", tcfg.batch_size,
                                       autocast=backend.autocast())
                if log_file and metrics:
                    _log(log_file, {"type": "eval", "epoch": state.epoch, "step": state.step, "split": "val", **metrics})
                if env.is_main and metrics:
                    console.print(f"epoch {state.epoch}: val accuracy {metrics['accuracy']:.4f} "
                                  f"macro-F1 {metrics['macro_f1']:.4f}")
            if metrics is not None and tcfg.best_metric not in metrics:
                raise MsaDistError(f"train.best_metric={tcfg.best_metric!r} is not a metric; use accuracy, macro_f1 or weighted_f1")
            save(metrics)
            summary["val"] = metrics
    if env.is_main and summary.get("val"):
        print_metrics(summary["val"], f"val metrics after {tcfg.epochs} epochs")
    summary.update(step=state.step, nonfinite_total=state.nonfinite_total)
    return summary


def _resume_point(ckpt_root: Path, resume: Optional[str]) -> Optional[Path]:
    if not resume:
        return None
    if resume == "auto":
        return ckpt.latest_checkpoint(ckpt_root)
    path = Path(resume)
    if not path.is_dir():
        raise MsaDistError(f"--resume {resume}: no such checkpoint directory (use 'auto' or a step-NNNNNNN dir)")
    return path


def _is_better(value: float, best: Optional[float]) -> bool:
    return best is None or value > best


def _log(handle, record: dict) -> None:
    handle.write(json.dumps(record) + "\n")
    handle.flush()
