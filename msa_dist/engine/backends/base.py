"""What every backend shares: the single-process backend (`Backend`), joining and leaving the
process group, and the collectives of the multi-process backends (`ProcessGroupBackend`)."""
from __future__ import annotations

import contextlib
import datetime
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous

from msa_dist.config import BackendConfig, OptimConfig
from msa_dist.engine.optim import build_optimizer, build_scheduler
from msa_dist.engine.runtime import DistEnv, elastic_restart_count
from msa_dist.errors import MsaDistError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)  # long enough for rank 0's tokenizer / eval


class Backend:
    """One process, CPU or one GPU, no process group. The base of the others."""

    name = "single"
    checkpoint_format = "torch"  # model.pt + state.pt, the same for any number of ranks

    def __init__(self, cfg: BackendConfig, env: DistEnv):
        self.cfg, self.env = cfg, env
        self.amp_dtype = DTYPES[cfg.precision]
        self.model: Optional[torch.nn.Module] = None  # what the loop calls forward on
        self.module: Optional[torch.nn.Module] = None  # the plain model underneath
        self.optimizer = self.scheduler = None
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.precision == "fp16")
        self.grad_accum_steps = 1
        self.grad_clip = 0.0
        self._window_has_grads = False  # a backward ran since the last optimizer step

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

    def check_resume(self, saved: dict, ckpt_dir: Path) -> None:
        """Raise in one line if this backend cannot load a checkpoint written under layout `saved`."""
        if saved.get("checkpoint_format", "torch") != self.checkpoint_format:
            raise MsaDistError(
                f"{ckpt_dir} was written by backend.name={saved.get('backend')} and cannot be resumed with "
                f"backend.name={self.name}: resume with backend.name={saved.get('backend')}, or start a new run "
                f"from its weights with train.init_from={ckpt_dir / 'model.pt'}")

    # -- the step ----------------------------------------------------------------------------
    def autocast(self):
        """Mixed precision for the forward pass (a no-op in fp32)."""
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)

    def accumulate(self, is_boundary: bool):
        """Context for forward + backward of one micro batch (DDP skips the gradient sync)."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, skip: bool = False) -> None:
        """Backward of one micro batch. `skip` (a non-finite loss on some rank): every parameter's
        gradient from this batch is replaced by zeros, so the collectives inside backward (DDP's
        all-reduce, ZeRO's reduce-scatter) still run on all ranks, and nothing is learnt from it."""
        with _zeroed_param_grads(self.module, skip):
            self._backward(loss)
        self._window_has_grads = self._window_has_grads or not skip

    def _backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.grad_accum_steps).backward()

    def step(self, is_boundary: bool) -> Optional[float]:
        """After each micro batch; at a boundary: clip, step, schedule. Returns the grad norm.

        A window whose every loss was skipped (non-finite) changes no weight; the schedule
        still advances, so the learning rate follows the step count on every backend.
        """
        if not is_boundary:
            return None
        if not self._window_has_grads:
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            return None
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(
            self.module.parameters(), self.grad_clip if self.grad_clip > 0 else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._window_has_grads = False
        return float(norm)

    def lr(self) -> float:
        return self.optimizer.param_groups[-1]["lr"]

    def sync_buffers(self) -> None:
        """Give every rank the same buffers (BatchNorm statistics) before an evaluation or a save."""

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


def join_process_group(env: DistEnv, timeout_s: float = PROCESS_GROUP_TIMEOUT.total_seconds()) -> None:
    """init_process_group from the launcher's environment: NCCL on GPUs, gloo on CPUs.

    The store's keys get a prefix per torchrun restart: after a restart, a rank that read a key
    the failed attempt left behind (a dead peer's address) would wait for that peer forever.
    """
    if dist.is_initialized():
        return
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    timeout = datetime.timedelta(seconds=timeout_s)  # backend.timeout_s: how long a collective may wait for a peer
    store, rank, world_size = next(rendezvous("env://", timeout=timeout))
    store = dist.PrefixStore(f"msa-dist/attempt-{elastic_restart_count()}", store)
    dist.init_process_group("nccl" if env.device.type == "cuda" else "gloo", store=store, rank=rank,
                            world_size=world_size, timeout=timeout)


class ProcessGroupBackend(Backend):
    """What every multi-process backend shares: collectives over torch.distributed."""

    def all_reduce_sum(self, tensor):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self):
        dist.barrier()

    def broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_buffers(self) -> None:
        # Each rank updates BatchNorm's running statistics from its own batches (DDP broadcasts
        # rank 0's before each forward; DeepSpeed never does): rank 0's win, as in model.pt.
        for buffer in self.module.buffers():
            dist.broadcast(buffer.data, src=0)

    def close(self):
        # The group outlives one run: `ablate` and `sweep` train several in one process, and a
        # second init_process_group on the same store would read the first one's stale keys.
        # `leave_process_group` ends it when the command is done. No barrier here: after a
        # failure on one rank the others would wait in it for the full timeout.
        pass


def leave_process_group() -> None:
    """Destroy the process group at the end of a command (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def _zeroed_param_grads(module: torch.nn.Module, enabled: bool):
    """Replace the gradient reaching each trainable parameter by zeros while active."""
    if not enabled:
        yield
        return
    handles = [p.register_hook(torch.zeros_like) for p in module.parameters() if p.requires_grad]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
