"""Backends: the one place that differs between one process, DDP, DeepSpeed and FSDP2.

`build_backend(cfg.backend, env)` picks one at setup. Each backend chooses its precision once
(disabled pieces are no-ops: `nullcontext()`, `GradScaler(enabled=False)`), so the training loop
calls the same methods whatever runs underneath:

    with backend.accumulate(is_boundary):      # DDP: no gradient all-reduce on accumulation steps
        with backend.autocast():               # bf16 / fp16 autocast, or nothing
            logits = backend.model(...)
        backend.backward(loss, drop=nonfinite) # scaled for accumulation (and fp16)
    backend.step(is_boundary)                  # clip, step, schedule at a boundary
"""

from __future__ import annotations

import warnings
from pathlib import Path

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import BackendConfig
from msa_dist.engine.backends.base import Backend
from msa_dist.engine.backends.ddp import DDPBackend
from msa_dist.engine.backends.deepspeed import TAG as DEEPSPEED_TAG
from msa_dist.engine.backends.deepspeed import DeepSpeedBackend
from msa_dist.engine.backends.fsdp import TAG as FSDP_TAG
from msa_dist.engine.backends.fsdp import FSDPBackend
from msa_dist.engine.runtime import DistEnv

__all__ = ["Backend", "DDPBackend", "DeepSpeedBackend", "FSDPBackend", "build_backend", "saved_format"]


def build_backend(cfg: BackendConfig, env: DistEnv, join: bool = True) -> Backend:
    """The one place that branches on the backend name. `join=False`: the caller calls
    `backend.init_process_group()` itself (after checks that should fail fast). Joining is
    idempotent; the group is left by `engine.group.process_group_scope`, around the command."""
    if cfg.name == "single":
        if env.world_size > 1:
            raise MsaDistError(
                f"backend.name=single but WORLD_SIZE={env.world_size}: "
                "use backend.name=ddp, deepspeed or fsdp under torchrun"
            )
        if cfg.zero_stage:
            warnings.warn("backend.zero_stage has no effect with backend.name=single", stacklevel=2)
        backend = Backend(cfg, env)
    elif cfg.name == "ddp":
        if cfg.zero_stage:
            warnings.warn("backend.zero_stage has no effect with backend.name=ddp", stacklevel=2)
        backend = DDPBackend(cfg, env)
    elif cfg.name == "fsdp":
        if cfg.zero_stage:
            warnings.warn("backend.zero_stage has no effect with backend.name=fsdp (it always shards)", stacklevel=2)
        if cfg.ddp_static_graph or cfg.ddp_bucket_mb != BackendConfig.ddp_bucket_mb:
            warnings.warn("backend.ddp_* options have no effect with backend.name=fsdp", stacklevel=2)
        backend = FSDPBackend(cfg, env)
    else:
        if cfg.ddp_static_graph or cfg.ddp_bucket_mb != BackendConfig.ddp_bucket_mb:
            warnings.warn("backend.ddp_* options have no effect with backend.name=deepspeed", stacklevel=2)
        backend = DeepSpeedBackend(cfg, env)
    if cfg.name != "fsdp" and not cfg.fsdp_reshard_after_forward:
        warnings.warn(f"backend.fsdp_reshard_after_forward has no effect with backend.name={cfg.name}", stacklevel=2)
    if cfg.name != "deepspeed":
        if cfg.deepspeed_config:
            warnings.warn(f"backend.deepspeed_config has no effect with backend.name={cfg.name}", stacklevel=2)
        if cfg.precision == "fp16" and env.device.type == "cpu":
            warnings.warn("fp16 autocast on a CPU is slow and rarely useful; bf16 is the CPU choice", stacklevel=2)
    if join:
        backend.init_process_group()
    return backend


def saved_format(step_dir: Path) -> str:
    """The checkpoint format of a saved step directory, as the backend that writes it recognises it:
    'deepspeed' (DeepSpeed's own files, which it unpickles), 'fsdp' (a DCP folder, whose index DCP
    unpickles) or 'torch' (tensors and plain data)."""
    for backend in (DeepSpeedBackend, FSDPBackend):
        if backend.wrote(step_dir):
            return backend.checkpoint_format
    return Backend.checkpoint_format


def format_folder(step_dir: Path) -> str | None:
    """The folder of `step_dir` that its backend's loader unpickles (trust.py vouches for it), or None."""
    return {"deepspeed": DEEPSPEED_TAG, "fsdp": FSDP_TAG}.get(saved_format(step_dir))
