"""Rank, world and device, read once from the environment into a small frozen object."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. Never written back into the config."""
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or "RANK" in os.environ


def read_env(device: str = "auto") -> DistEnv:
    """Read RANK / LOCAL_RANK / WORLD_SIZE (set by torchrun or the deepspeed launcher)."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        from msa_dist.errors import MsaDistError
        raise MsaDistError("backend.device=cuda but no CUDA GPU is visible; use backend.device=cpu")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)
