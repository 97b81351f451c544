"""What every backend shares: the single-process backend (`Backend`), joining and leaving the
process group, and the collectives of the multi-process backends (`ProcessGroupBackend`)."""

from __future__ import annotations

import contextlib
import datetime
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import BackendConfig, OptimConfig
from msa_dist.engine.checkpoint.safe_load import load_tensors
from msa_dist.engine.optim import build_optimizer, build_scheduler
from msa_dist.engine.runtime import DistEnv, elastic_restart_count

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)  # long enough for rank 0's tokenizer / eval


class Backend:
    """One process, CPU or one GPU, no process group. The base of the others."""

    name = "single"
    checkpoint_format = "torch"  # model.pt + state.pt, the same for any number of ranks

    def __init__(self, cfg: BackendConfig, env: DistEnv):
        self.cfg, self.env = cfg, env
        if env.device.type == "cuda" and not cfg.cudnn_sdpa:
            torch.backends.cuda.enable_cudnn_sdp(False)  # attention then runs on flash / memory-efficient kernels
        self.amp_dtype = DTYPES[cfg.precision]
        self.model: torch.nn.Module | None = None  # what the loop calls forward on
        self.module: torch.nn.Module | None = None  # the plain model underneath
        self.optimizer = self.scheduler = None
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.precision == "fp16")
        self.grad_accum_steps = 1
        self.grad_clip = 0.0
        self._grad_mask: GradMask | None = None
        self._trainable: list[torch.nn.Parameter] = []  # listed once in `prepare`, not per optimizer step

    # -- setup -------------------------------------------------------------------------------
    def init_process_group(self) -> None:
        """Nothing to join for one process."""

    def prepare(
        self,
        model: torch.nn.Module,
        optim_cfg: OptimConfig,
        total_steps: int,
        grad_accum_steps: int,
        micro_batch_size: int,
    ) -> None:
        """Move the model to the device, wrap it, and build the optimizer and schedule."""
        self.grad_accum_steps, self.grad_clip = grad_accum_steps, optim_cfg.grad_clip
        self.module = model.to(self.env.device)
        self.model = self._wrap(self.module)
        self.model = compile_model(self.cfg, self.model)
        self.optimizer = build_optimizer(optim_cfg, self.module.parameter_groups())
        self.scheduler = build_scheduler(optim_cfg, self.optimizer, total_steps)
        self._trainable = [p for p in self.module.parameters() if p.requires_grad]
        self.install_grad_mask()

    def install_grad_mask(self) -> None:
        """Hooks that zero a dropped micro batch's gradients on the device, when a window holds
        several micro batches (with one, `step`'s skip already discards the window) and not with
        fp16's loss scaling. They cost a kernel per parameter and micro batch: ~10 ms of host time
        per step for BERT-base + ResNet-50, which is why a window of one goes without."""
        if self.cfg.precision != "fp16" and self.grad_accum_steps > 1:
            self._grad_mask = GradMask(self.module, self.env.device)

    def _wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def check_resume(self, saved: dict, ckpt_dir: Path) -> None:
        """Raise in one line if this backend cannot load a checkpoint written under layout `saved`."""
        if saved.get("checkpoint_format", "torch") != self.checkpoint_format:
            raise MsaDistError(
                f"{ckpt_dir} was written by backend.name={saved.get('backend')} and cannot be resumed with "
                f"backend.name={self.name}: resume with backend.name={saved.get('backend')}, or start a new run "
                f"from its weights with train.init_from={ckpt_dir / 'model.pt'}"
            )

    # -- the step ----------------------------------------------------------------------------
    def autocast(self):
        """Mixed precision for the forward pass (a no-op in fp32)."""
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)

    def accumulate(self, is_boundary: bool):
        """Context for forward + backward of one micro batch (DDP skips the gradient sync)."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, drop: torch.Tensor | None = None) -> None:
        """Backward of one micro batch. `drop`, a bool on the device (a non-finite loss on some
        rank): every parameter's gradient from this batch becomes zero, decided on the device
        (no host read), so the collectives inside backward (DDP's all-reduce, ZeRO's
        reduce-scatter) still run on all ranks. With fp16 nothing is masked: the loss scaler
        sees the overflow, skips the step and lowers the scale, as it is meant to."""
        if drop is not None and self._grad_mask is not None:
            self._grad_mask.drop = drop
        self._backward(loss)

    def _backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.grad_accum_steps).backward()

    def step(self, is_boundary: bool, skip: torch.Tensor | None = None) -> torch.Tensor | None:
        """After each micro batch; at a boundary: clip, step, schedule. Returns the grad norm (on the device).

        `skip` (a bool on the device: no micro batch of this window had a finite loss) leaves
        weights and optimizer moments as they were; a fused AdamW decides that on the device, any
        other optimizer reads the flag back. The schedule advances either way, so the learning
        rate follows the step count on every backend.
        """
        if not is_boundary:
            return None
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self._trainable if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
        with skip_update(self.optimizer, None if self.scaler.is_enabled() else skip):
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

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
            torch.save(
                {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    **client_state,
                },
                ckpt_dir / "state.pt",
            )

    def load_state(self, ckpt_dir: Path) -> dict:
        """Restore what `save_state` wrote; returns the client state."""
        self.module.load_state_dict(load_tensors(ckpt_dir / "model.pt", map_location=self.env.device))
        state = load_tensors(ckpt_dir / "state.pt")  # tensors and plain data only: no code runs
        self.optimizer.load_state_dict(state.pop("optimizer"))
        self.scheduler.load_state_dict(state.pop("scheduler"))
        self.scaler.load_state_dict(state.pop("scaler"))
        return state


def compile_model(cfg: BackendConfig, model: torch.nn.Module) -> torch.nn.Module:
    """backend.compile: the whole (wrapped) model compiled, or its encoders compiled in place.

    Encoders are compiled with `nn.Module.compile`, which keeps their parameter names (no
    `_orig_mod.` prefix), so checkpoints load either way; the fusion head stays eager.
    """
    if not cfg.compile:
        if (cfg.compile_scope, cfg.compile_mode) != ("model", "default"):
            warnings.warn(
                "backend.compile_scope / backend.compile_mode have no effect without backend.compile=true", stacklevel=3
            )
        return model
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode
    if cfg.compile_scope == "model":
        return torch.compile(model, mode=mode)
    plain = getattr(model, "module", model)  # under DDP: the model it wraps
    for encoder in (plain.text_encoder, plain.image_encoder):
        if encoder is not None:
            encoder.compile(mode=mode)
            if getattr(plain.head, "uses_tokens", False):  # token heads call forward_tokens, not the module
                encoder.forward_tokens = torch.compile(encoder.forward_tokens, mode=mode)
    return model


def contiguous_params(model: torch.nn.Module, backend: str, why: str) -> torch.nn.Module:
    """The model with every parameter in the default memory layout: DeepSpeed's flat buffers and
    FSDP's shards take plain contiguous memory (a channels_last conv weight fails in both), so
    image encoders go back to it, with a warning."""
    if all(p.is_contiguous() for p in model.parameters()):
        return model
    warnings.warn(
        f"model.image.channels_last has no effect with backend.name={backend}: {why} need the default memory layout",
        stacklevel=3,
    )
    for module in model.modules():
        if getattr(module, "channels_last", False):
            module.channels_last = False
    return model.to(memory_format=torch.contiguous_format)


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
    dist.init_process_group(
        "nccl" if env.device.type == "cuda" else "gloo", store=store, rank=rank, world_size=world_size, timeout=timeout
    )


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


class GradMask:
    """A hook on every trainable parameter: its gradient from the current micro batch becomes
    zero when `drop` (a bool tensor on the device) is true. Installed once; deciding costs no
    host read, only one `masked_fill` per parameter and micro batch."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.drop = torch.zeros((), dtype=torch.bool, device=device)
        self.handles = [p.register_hook(self._mask) for p in module.parameters() if p.requires_grad]

    def _mask(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(self.drop, 0)


@contextlib.contextmanager
def skip_update(optimizer: torch.optim.Optimizer, skip: torch.Tensor | None):
    """`optimizer.step()` inside changes nothing when `skip` (a device bool) is true.

    Optimizers that take AMP's `found_inf` (fused AdamW) skip on the device; for any other the
    flag is read back here, once per optimizer step.
    """
    if skip is None:
        yield
        return
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.found_inf = skip.float()
        try:
            yield
        finally:
            del optimizer.found_inf
        return
    if not bool(skip):
        yield
        return
    had = "step" in optimizer.__dict__  # LR schedulers wrap `step` on the instance
    previous = optimizer.__dict__.get("step")
    optimizer.step = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if had:
            optimizer.step = previous
        else:
            del optimizer.step
