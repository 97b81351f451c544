"""torchrun + PyTorch FSDP2 (`fully_shard`): parameters, gradients and optimizer state sharded across ranks.

Each block of the text and image encoders (a transformer layer, a CNN stage: `block_modules`) is
its own FSDP unit, gathered for its forward and again for its backward; the root (embeddings,
stems, the fusion head) is the last unit. Precision is chosen here once, as FSDP's
`MixedPrecisionPolicy`: with bf16 the gathered weights and the compute are bf16 and gradients
are reduced in fp32 into the fp32 shards the optimizer steps; with fp32 nothing is cast. There
is no autocast on top. Gradients are reduce-scattered after every micro batch (accumulated in
their shards), so memory never holds a whole model's gradients.

A checkpoint's step directory holds (engine/checkpoint/files.py writes and publishes it):
  fsdp/      torch.distributed.checkpoint (DCP): model, optimizer and the EMA's trained weights,
             as each rank's shards plus a `.metadata` index; DCP reshards them on load, so a
             checkpoint resumes on any number of ranks. DCP unpickles `.metadata`: like
             DeepSpeed's files it is read only if this user saved it (checkpoint/trust.py).
  state.pt   the schedule and the client state (rank 0; tensors and plain data)
  model.pt   the consolidated weights (rank 0), which evaluate / predict / export read as always
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from msa_dist.common.errors import MsaDistError
from msa_dist.engine.backends.base import ProcessGroupBackend, contiguous_params, join_process_group
from msa_dist.engine.checkpoint.safe_load import load_tensors
from msa_dist.models.layers import block_modules

TAG = "fsdp"  # the DCP checkpoint's sub-directory inside each step directory


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: writing it writes the DTensor), or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class FSDPBackend(ProcessGroupBackend):
    """torchrun + FSDP2; NCCL on GPUs, gloo on CPUs."""

    name = "fsdp"
    checkpoint_format = "fsdp"

    @staticmethod
    def wrote(step_dir: Path) -> bool:
        """Whether `step_dir` holds a checkpoint of this backend's format (a DCP folder)."""
        return (Path(step_dir) / TAG).is_dir()

    def init_process_group(self) -> None:
        if "RANK" not in os.environ:
            raise MsaDistError(
                "backend.name=fsdp needs a launcher: run it under torchrun (launch/torchrun.sh; "
                "--nproc_per_node 1 for one process) or use backend.name=single"
            )
        join_process_group(self.env, self.cfg.timeout_s)

    def _wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        module = contiguous_params(module, self.name, "its parameter shards")
        mesh = init_device_mesh(self.env.device.type, (self.env.world_size,))
        options = {"mesh": mesh, "reshard_after_forward": self.cfg.fsdp_reshard_after_forward}
        if self.cfg.precision == "bf16":
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            # BatchNorm keeps fp32 running statistics and its kernels want weights of their dtype:
            # each is a unit of its own that stays fp32 (its input cast up, its output back to bf16).
            fp32_norm = MixedPrecisionPolicy(param_dtype=torch.float32, output_dtype=torch.bfloat16)
            for norm in [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]:
                if norm.affine:
                    fully_shard(norm, **{**options, "mp_policy": fp32_norm})
        for encoder in (module.text_encoder, module.image_encoder):
            for block in block_modules(encoder) if encoder is not None else ():
                fully_shard(block, **options)
        fully_shard(module, **options)  # the root last: it holds what no block took
        return module

    def install_grad_mask(self) -> None:
        """Hooks on the sharded parameters would never fire (FSDP reduce-scatters into their
        `.grad` outside autograd): `backward` masks a dropped micro batch instead."""

    # -- the step ----------------------------------------------------------------------------
    def autocast(self):
        return contextlib.nullcontext()  # the MixedPrecisionPolicy casts; nothing on top

    def backward(self, loss: torch.Tensor, drop: torch.Tensor | None = None) -> None:
        """Backward of one micro batch; with accumulation, a dropped one (`drop`, a device bool the
        same on every rank) leaves each gradient shard as it was before it, decided on the device."""
        if drop is None or self.grad_accum_steps == 1:  # one micro batch: `step`'s skip discards it
            self._backward(loss)
            return
        held = [None if p.grad is None else _local(p.grad).clone() for p in self._trainable]
        self._backward(loss)
        with torch.no_grad():
            for param, before in zip(self._trainable, held):
                if param.grad is not None:
                    grad = _local(param.grad)
                    grad.copy_(torch.where(drop, torch.zeros_like(grad) if before is None else before, grad))

    def step(self, is_boundary: bool, skip: torch.Tensor | None = None) -> torch.Tensor | None:
        norm = super().step(is_boundary, skip)  # clipping works on the DTensor shards as they are
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    # -- checkpoint state: DCP's shards on every rank; rank 0 adds plain weights and the rest --
    def save_state(self, ckpt_dir: Path, client_state: dict) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

        client = dict(client_state)
        ema = {k: self._from_rank_0(v) for k, v in (client.pop("ema", None) or {}).items()}
        model_state, optim_state = get_state_dict(self.module, self.optimizer)
        sharded = {"model": model_state, "optimizer": optim_state, **({"ema": ema} if ema else {})}
        dcp.save(sharded, checkpoint_id=ckpt_dir / TAG)
        full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.env.is_main:
            torch.save(full, ckpt_dir / "model.pt")
            torch.save(
                {"scheduler": self.scheduler.state_dict(), "has_ema": bool(ema), **client}, ckpt_dir / "state.pt"
            )

    def _from_rank_0(self, tensor: torch.Tensor) -> torch.Tensor:
        """A shard as it is; a plain tensor (the EMA's trained BatchNorm statistics, which each
        rank updates from its own batches) as rank 0 holds it: DCP saves one copy of a replicated
        tensor, from whichever rank its de-duplication picks, and model.pt holds rank 0's."""
        if isinstance(tensor, DTensor):
            return tensor
        copy = tensor.to(self.env.device, copy=True)
        torch.distributed.broadcast(copy, src=0)
        return copy

    def load_state(self, ckpt_dir: Path) -> dict:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        if not (ckpt_dir / TAG / ".metadata").is_file():
            raise MsaDistError(f"{ckpt_dir} holds no FSDP checkpoint (no {TAG}/.metadata)")
        state = load_tensors(ckpt_dir / "state.pt")  # tensors and plain data only: no code runs
        model_state, optim_state = get_state_dict(self.module, self.optimizer)
        sharded = {"model": model_state, "optimizer": optim_state}
        if state.pop("has_ema"):  # filled in place, in this run's sharding
            sharded["ema"] = {
                k: v.detach().clone() for k, v in self.module.state_dict().items() if v.is_floating_point()
            }
        dcp.load(sharded, checkpoint_id=ckpt_dir / TAG)  # resharded to this world size
        set_state_dict(
            self.module, self.optimizer, model_state_dict=sharded["model"], optim_state_dict=sharded["optimizer"]
        )
        self.scheduler.load_state_dict(state.pop("scheduler"))
        return {**state, "ema": sharded.get("ema", {})}
