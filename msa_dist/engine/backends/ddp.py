"""torchrun + DistributedDataParallel (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import contextlib
import os

import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.engine.backends.base import ProcessGroupBackend, join_process_group


class DDPBackend(ProcessGroupBackend):
    """torchrun + DistributedDataParallel; NCCL on GPUs, gloo on CPUs."""

    name = "ddp"

    def init_process_group(self) -> None:
        if "RANK" not in os.environ:
            raise MsaDistError(
                "backend.name=ddp needs a launcher: run it under torchrun "
                "(launch/torchrun.sh) or use backend.name=single"
            )
        join_process_group(self.env, self.cfg.timeout_s)

    def _wrap(self, module):
        ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(
            module,
            device_ids=ids,
            bucket_cap_mb=self.cfg.ddp_bucket_mb,
            static_graph=self.cfg.ddp_static_graph,
            find_unused_parameters=False,
        )

    def accumulate(self, is_boundary: bool):
        # No gradient all-reduce on accumulation micro steps; it happens once, at the boundary.
        return contextlib.nullcontext() if is_boundary else self.model.no_sync()
