"""DeepSpeed: ZeRO stage 0-3 behind the same interface as the other backends.

The DeepSpeed JSON is generated from our config (micro batch, accumulation, clipping, precision,
ZeRO stage, optimizer) and `backend.deepspeed_config`, if given, is merged on top. The learning
rate schedule is msa-dist's own (the same warmup + decay on every backend), handed to
`deepspeed.initialize`; a `scheduler` section in backend.deepspeed_config replaces it.

Precision: fp32; bf16 through DeepSpeed's `torch_autocast` section (fp32 parameters, bf16
compute: its `bf16` section casts the model and ResNet's BatchNorm fails in DeepSpeed 0.19);
fp16 through its `fp16` section with dynamic loss scaling (GPU only).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import warnings
from pathlib import Path

import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import BackendConfig, OptimConfig
from msa_dist.config.values import deep_merge
from msa_dist.engine.backends.base import ProcessGroupBackend, contiguous_params, join_process_group, skip_update
from msa_dist.engine.backends.universal import convert_to_universal, repair_stage3_load
from msa_dist.engine.optim import build_scheduler, optimizer_param_groups
from msa_dist.engine.runtime import DistEnv

TAG = "deepspeed"  # the DeepSpeed checkpoint's sub-directory inside each step directory
# Keys our loader and loop own: a user's deepspeed_config may not change them.
OWNED_KEYS = {
    "train_micro_batch_size_per_gpu": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum_steps",
    "train_batch_size": "train.batch_size x train.grad_accum_steps x world size",
}


def _deepspeed():
    import deepspeed

    warnings.filterwarnings(
        "ignore", message=r".*is deprecated\. Please use `torch\.distributed", category=FutureWarning
    )
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its per-step INFO lines drown ours
    return deepspeed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_defaults() -> None:
    """A plain `python` process: one rank, so DeepSpeed does not go looking for MPI."""
    if "RANK" in os.environ:
        return
    for key, value in (
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_WORLD_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", str(_free_port())),
    ):
        os.environ.setdefault(key, value)


def deepspeed_config(
    cfg: BackendConfig, optim: OptimConfig, micro_batch_size: int, grad_accum_steps: int, world_size: int, on_gpu: bool
) -> dict:
    """The DeepSpeed JSON for our config, with `cfg.deepspeed_config` merged on top."""
    adamw = {
        "lr": optim.lr,
        "betas": list(optim.betas),
        "eps": 1e-8,
        "weight_decay": optim.weight_decay,
        "torch_adam": True,
    }  # torch's AdamW: no JIT-compiled op, and per-group lrs as given
    if optim.fused and on_gpu:
        adamw["fused"] = True
    generated = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": micro_batch_size * grad_accum_steps * world_size,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": False},
        "torch_autocast": {"enabled": cfg.precision == "bf16", "dtype": "bfloat16"},
        "fp16": {
            "enabled": cfg.precision == "fp16",
            "auto_cast": True,
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "optimizer": {"type": "AdamW", "params": adamw},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if not cfg.deepspeed_config:
        return generated
    path = Path(cfg.deepspeed_config)
    if not path.is_file():
        raise MsaDistError(f"backend.deepspeed_config: file not found: {path}")
    try:
        user = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MsaDistError(f"backend.deepspeed_config {path} is not valid JSON: {exc}") from None
    for key, ours in OWNED_KEYS.items():
        if key in user and user[key] != generated[key]:
            raise MsaDistError(f"backend.deepspeed_config sets {key}={user[key]}; set {ours} in our config instead")
    return deep_merge(generated, user)


class DeepSpeedBackend(ProcessGroupBackend):
    """`deepspeed.initialize` with ZeRO 0-3; runs under torchrun, the deepspeed launcher, or alone."""

    name = "deepspeed"
    checkpoint_format = "deepspeed"

    @staticmethod
    def wrote(step_dir: Path) -> bool:
        """Whether `step_dir` holds a checkpoint of this backend's format (DeepSpeed's own files)."""
        return (Path(step_dir) / TAG).is_dir()

    def __init__(self, cfg: BackendConfig, env: DistEnv):
        super().__init__(cfg, env)
        self.engine = None
        self.ds_config: dict = {}
        self._universal = False  # resuming a ZeRO checkpoint saved by another number of ranks

    def init_process_group(self) -> None:
        if self.cfg.precision == "fp16" and self.env.device.type != "cuda":
            raise MsaDistError(
                "backend.precision=fp16 with DeepSpeed needs a GPU (its CPU accelerator has no fp16); "
                "use backend.precision=bf16 or fp32 on a CPU"
            )
        _single_process_defaults()
        if self.env.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is first imported
        join_process_group(self.env, self.cfg.timeout_s)  # DeepSpeed's communication then wraps this process group
        _deepspeed().init_distributed(
            dist_backend="nccl" if self.env.device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=self.cfg.timeout_s),
        )

    def prepare(
        self,
        model: torch.nn.Module,
        optim_cfg: OptimConfig,
        total_steps: int,
        grad_accum_steps: int,
        micro_batch_size: int,
    ) -> None:
        """deepspeed.initialize with our AdamW parameter groups (each part keeps its own lr)."""
        self.grad_accum_steps, self.grad_clip = grad_accum_steps, optim_cfg.grad_clip
        self.module = contiguous_params(model, self.name, "its flat parameter buffers").to(self.env.device)
        self.ds_config = deepspeed_config(
            self.cfg, optim_cfg, micro_batch_size, grad_accum_steps, self.env.world_size, self.env.device.type == "cuda"
        )
        if self._universal:  # read by DeepSpeed only when loading
            self.ds_config["checkpoint"] = {**self.ds_config.get("checkpoint", {}), "load_universal": True}
        groups = optimizer_param_groups(optim_cfg, model.parameter_groups())
        schedule = (
            None
            if "scheduler" in self.ds_config
            else (lambda optimizer: build_scheduler(optim_cfg, optimizer, total_steps))
        )
        engine, optimizer, _, scheduler = _deepspeed().initialize(
            model=model, model_parameters=groups, config=self.ds_config, lr_scheduler=schedule
        )
        self.engine = self.model = engine
        self.optimizer, self.scheduler = optimizer, scheduler
        self.install_grad_mask()

    def check_resume(self, saved: dict, ckpt_dir: Path) -> None:
        super().check_resume(saved, ckpt_dir)
        way_out = f"start a new run from its consolidated weights with train.init_from={ckpt_dir / 'model.pt'}"
        saved_stage, stage = saved.get("zero_stage"), self.cfg.zero_stage
        # DeepSpeed 0.19.8's universal load looks for the model-state files of the new stage's
        # layout (ZeRO-3 names them per rank), finds none and asserts (state_dict_factory.py:168).
        if saved_stage != stage and not {saved_stage, stage} <= {1, 2}:
            raise MsaDistError(
                f"{ckpt_dir} was saved with ZeRO stage {saved_stage}, this run uses "
                f"backend.zero_stage={stage}, and DeepSpeed converts a checkpoint between stages "
                f"1 and 2 only: resume with stage {saved_stage}, or {way_out}"
            )
        # ZeRO partitions the optimizer state per rank: on another world size (or from stage 1 to 2)
        # it goes through DeepSpeed's universal checkpoint, converted in load_state once the group exists.
        self._universal = stage > 0 and (saved.get("world_size") != self.env.world_size or saved_stage != stage)

    # -- the step: DeepSpeed scales for accumulation, syncs only at boundaries, and casts ------
    def autocast(self):
        return contextlib.nullcontext()  # the engine's forward applies torch_autocast / fp16 itself

    def _backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self, is_boundary: bool, skip: torch.Tensor | None = None) -> torch.Tensor | None:
        # engine.step() runs on every micro batch; DeepSpeed counts them and steps at the boundary.
        # fp16: DeepSpeed's loss scaler finds the overflow and skips the step itself.
        with skip_update(self.engine.basic_optimizer, skip if is_boundary and self.cfg.precision != "fp16" else None):
            self.engine.step()
        if not is_boundary:
            return None
        norm = self.engine.get_global_grad_norm()
        return norm if norm is None or isinstance(norm, torch.Tensor) else torch.tensor(float(norm))

    def lr(self) -> float:
        return self.engine.get_lr()[-1]

    # -- checkpoint state: every rank writes its part; rank 0 adds plain weights -------------
    def save_state(self, ckpt_dir: Path, client_state: dict) -> None:
        self.engine.save_checkpoint(str(ckpt_dir), tag=TAG, client_state=client_state, save_latest=False)
        weights = self._consolidated_state_dict()
        if self.env.is_main:
            torch.save(weights, ckpt_dir / "model.pt")
            (ckpt_dir / "deepspeed_config.json").write_text(json.dumps(self.ds_config, indent=1))

    def _consolidated_state_dict(self) -> dict | None:
        """The unwrapped model's full fp32 state_dict on rank 0 (ZeRO-3 gathers its shards: all ranks call this)."""
        params = list(self.module.parameters())
        with _deepspeed().zero.GatheredParameters(params, modifier_rank=None):
            if not self.env.is_main:
                return None
            return {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}

    def load_state(self, ckpt_dir: Path) -> dict:
        if not (ckpt_dir / TAG).is_dir():
            raise MsaDistError(f"{ckpt_dir} holds no DeepSpeed checkpoint (no {TAG}/ directory)")
        load_dir = self._universal_copy(ckpt_dir) if self._universal else ckpt_dir
        path, client_state = self.engine.load_checkpoint(
            str(load_dir), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise MsaDistError(f"DeepSpeed could not load the checkpoint in {load_dir / TAG}")
        if self._universal and self.cfg.zero_stage == 3:
            repair_stage3_load(self.engine.optimizer.optimizer, load_dir / TAG)
        return client_state

    def _universal_copy(self, ckpt_dir: Path) -> Path:
        """Rank 0 converts (or reuses) the universal copy; every rank gets its path or rank 0's error."""
        result = None
        if self.env.is_main:
            try:
                result = str(convert_to_universal(ckpt_dir, TAG))
            except MsaDistError as exc:
                result = MsaDistError(
                    f"{exc}: resume on the world size that saved it, or start a new run from its "
                    f"consolidated weights with train.init_from={ckpt_dir / 'model.pt'}"
                )
        result = self.broadcast_object(result)  # also the barrier: no rank reads a half-written copy
        if isinstance(result, MsaDistError):
            raise result
        return Path(result)
