"""Backends: the one place that differs between one process, DDP and DeepSpeed.

`build_backend(cfg.backend, env)` picks one at setup. Each backend chooses its precision once
(disabled pieces are no-ops: `nullcontext()`, `GradScaler(enabled=False)`), so the training loop
calls the same methods whatever runs underneath.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from msa_dist.config import BackendConfig, OptimConfig
from msa_dist.engine.optim import build_optimizer, build_scheduler
from msa_dist.engine.runtime import DistEnv
from msa_dist.errors import MsaDistError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Backend:
    """One process, CPU or one GPU, no process group. The base of the others."""

    name = "single"

    def __init__(self, cfg: BackendConfig, env: DistEnv):
        self.cfg, self.env = cfg, env
        self.amp_dtype = DTYPES[cfg.precision]
        self.model: Optional[torch.nn.Module] = None  # what the loop calls forward on
        self.module: Optional[torch.nn.Module] = None  # the plain model underneath
        self.optimizer = self.scheduler = None
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.precision == "fp16")
        self.grad_accum_steps = 1
        self.grad_clip = 0.0

    # -- setup -------------------------------------------------------------------------------
    def init_process_group(self) -> None:
        """Nothing to join for one process."""

    def prepare(self, model: torch.nn.Module, optim_cfg: OptimConfig, total_steps: int,
                grad_accum_steps: int, micro_batch_size: int) -> None:
        """Move the model to the device, wrap it, and build the optimizer and schedule."""
        self.grad_accum_steps, self.grad_clip = grad_accum_steps, optim_cfg.grad_clip
        self.module = model.to(self.env.device)
        self.model = self._wrap(self.module)
        if self.cfg.compile:
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(optim_cfg, self.module.parameter_groups())
        self.scheduler = build_scheduler(optim_cfg, self.optimizer, total_steps)

    def _wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    # -- the step ----------------------------------------------------------------------------
    def autocast(self):
        """Mixed precision for the forward pass (a no-op in fp32)."""
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)

    def accumulate(self, is_boundary: bool):
        """Context for forward + backward of one micro batch (DDP skips the gradient sync)."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.grad_accum_steps).backward()

    def step(self, is_boundary: bool) -> Optional[float]:
        """After each micro batch; at a boundary: clip, step, schedule. Returns the grad norm."""
        if not is_boundary:
            return None
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(
            self.module.parameters(), self.grad_clip if self.grad_clip > 0 else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def zero_grad(self) -> None:
        """Drop accumulated gradients (a skipped step)."""
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.optimizer.param_groups[-1]["lr"]

    # -- collectives (identity for one process) -----------------------------------------------
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        """Wait for all ranks."""

    def broadcast_object(self, obj):
        return obj

    # -- checkpoint state --------------------------------------------------------------------
    def save_state(self, ckpt_dir: Path, client_state: dict) -> None:
        """Write model, optimizer, scheduler and scaler into ckpt_dir (rank 0 for plain torch)."""
        if self.env.is_main:
            torch.save(self.module.state_dict(), ckpt_dir / "model.pt")
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict(), **client_state}, ckpt_dir / "state.pt")

    def load_state(self, ckpt_dir: Path) -> dict:
        """Restore what `save_state` wrote; returns the client state."""
        self.module.load_state_dict(torch.load(ckpt_dir / "model.pt", map_location=self.env.device, weights_only=True))
        state = torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state.pop("optimizer"))
        self.scheduler.load_state_dict(state.pop("scheduler"))
        self.scaler.load_state_dict(state.pop("scaler"))
        return state

    def close(self) -> None:
        """Leave the process group, if any."""


class DDPBackend(Backend):
    """torchrun + DistributedDataParallel; NCCL on GPUs, gloo on CPUs."""

    name = "ddp"

    def init_process_group(self) -> None:
        if "RANK" not in os.environ:
            raise MsaDistError("backend.name=ddp needs a launcher: run it under torchrun "
                               "(launch/torchrun.sh) or use backend.name=single")
        if not dist.is_initialized():
            if self.env.device.type == "cuda":
                torch.cuda.set_device(self.env.device)
            dist.init_process_group("nccl" if self.env.device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(minutes=30))

    def _wrap(self, module):
        ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(
            module, device_ids=ids, bucket_cap_mb=self.cfg.ddp_bucket_mb,
            static_graph=self.cfg.ddp_static_graph, find_unused_parameters=False)

    def accumulate(self, is_boundary: bool):
        # No gradient all-reduce on accumulation micro steps; it happens once, at the boundary.
        return contextlib.nullcontext() if is_boundary else self.model.no_sync()

    def all_reduce_sum(self, tensor):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self):
        dist.barrier()

    def broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self):
        if dist.is_initialized():
            dist.destroy_process_group()


def build_backend(cfg: BackendConfig, env: DistEnv) -> Backend:
    """The one place that branches on the backend name."""
    if cfg.name == "single":
        if env.world_size > 1:
            raise MsaDistError(f"backend.name=single but WORLD_SIZE={env.world_size}: "
                               "use backend.name=ddp or backend.name=deepspeed under torchrun")
        if cfg.zero_stage:
            warnings.warn("backend.zero_stage has no effect with backend.name=single")
        backend = Backend(cfg, env)
    elif cfg.name == "ddp":
        if cfg.zero_stage:
            warnings.warn("backend.zero_stage has no effect with backend.name=ddp")
        backend = DDPBackend(cfg, env)
    else:
        from msa_dist.engine.deepspeed_backend import DeepSpeedBackend
        backend = DeepSpeedBackend(cfg, env)
    if cfg.precision == "fp16" and env.device.type == "cpu" and cfg.name != "deepspeed":
        warnings.warn("fp16 autocast on a CPU is slow and rarely useful; bf16 is the CPU choice")
    backend.init_process_group()
    return backend
