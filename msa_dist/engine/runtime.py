"""Rank, world and device, read once from the environment into a small frozen object; SIGTERM."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, replace

import torch

from msa_dist.common.errors import MsaDistError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. Never written back into the config."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    local_world_size: int = 1  # processes on this node

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(self.local_world_size, 1))

    def describe(self) -> str:
        """The world layout in words, e.g. '4 ranks = 2 nodes x 2 per node, cuda'."""
        return (
            f"{self.world_size} rank(s) = {self.nodes} node(s) x {self.local_world_size} per node, {self.device.type}"
        )


def read_env(device: str = "auto") -> DistEnv:
    """Read RANK / LOCAL_RANK / WORLD_SIZE (set by torchrun or the deepspeed launcher)."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    # torchrun sets LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", world_size)))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise MsaDistError("backend.device=cuda but no CUDA GPU is visible; use backend.device=cpu")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistEnv(
        rank=rank, local_rank=local_rank, world_size=world_size, device=dev, local_world_size=local_world_size
    )


def resolve_global_batch(cfg, world_size: int):
    """`train.global_batch_size` > 0: the config with grad_accum_steps derived for this world size."""
    tcfg = cfg.train
    if tcfg.global_batch_size <= 0:
        return cfg
    accum, rest = divmod(tcfg.global_batch_size, tcfg.batch_size * world_size)
    if rest or not accum:
        raise MsaDistError(
            f"train.global_batch_size={tcfg.global_batch_size} is not a multiple of train.batch_size="
            f"{tcfg.batch_size} x {world_size} rank(s): pick a global batch the micro batches divide"
        )
    return replace(cfg, train=replace(tcfg, grad_accum_steps=accum))


def elastic_restart_count() -> int:
    """How often torchrun restarted this group after a failure (0 on the first start)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


class StopFlag:
    """Set by SIGTERM (how SLURM preempts, and how torchrun stops its workers).

    The handler only records the request; the loop acts on it at the next step boundary on
    every rank together. The previous handler comes back on exit.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopFlag:
        self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)

    def _handler(self, signum, frame) -> None:
        self.requested = True
