"""Helpers for the multi-process tests: start torchrun from pytest, find its ranks, read a run.

Not a test module (pytest collects test_*.py only); tests/integration/ imports it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from msa_dist.bench.soak import rank_pids
from msa_dist.config.schema import load_config, save_config

REPO = Path(__file__).resolve().parents[2]

# A model and data small enough for 2 ranks on a 2-core CPU; tests override what they need.
TINY = {
    "data": {"image_size": 32, "resize_size": 32, "max_length": 16, "workers": 1},
    "model": {
        "modality": "both",
        "text": {
            "name": "tiny",
            "tiny_hidden": 32,
            "tiny_layers": 1,
            "tiny_heads": 2,
            "tiny_vocab_size": 200,
            "tiny_dropout": 0.0,
        },
        "image": {"name": "tiny", "weights": "none", "tiny_width": 8},
        "head": {"proj_dim": 32, "hidden": 32, "dropout": 0.0},
    },
    "optim": {"lr": 3e-3, "text_lr": 3e-3, "image_lr": 3e-3, "warmup_steps": 2},
    "train": {"epochs": 2, "batch_size": 8, "seed": 0},
    "backend": {"name": "single", "device": "cpu"},
    "log": {"progress": False, "every_steps": 1},
}


def write_config(path: Path, shards: Path, *overrides: str) -> Path:
    """TINY with dotted `overrides` (e.g. "train.epochs=1"), resolved and written as YAML."""
    cfg = load_config(base=TINY, overrides=[f"data.shards={shards}", *overrides])
    save_config(cfg, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    # PYTHONFAULTHANDLER: a rank that hangs and is killed with SIGABRT prints where it was
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", DS_ACCELERATOR="cpu", PYTHONFAULTHANDLER="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"):
        env.pop(key, None)
    return env


def torchrun_cmd(args: list[str], nproc: int = 2, max_restarts: int = 0, module: str | None = "msa_dist") -> list[str]:
    """`python -m torch.distributed.run ... -m msa_dist train ...` (or a script when module is None)."""
    # c10d rendezvous (as launch/torchrun.sh uses): every restart is a new rendezvous round.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--rdzv-id",
        "test",
        "--max_restarts",
        str(max_restarts),
    ]
    return cmd + (["-m", module] if module else []) + args


def run(cmd: list[str], timeout: float = 150, **env) -> subprocess.CompletedProcess:
    """Run to completion; a hang fails the test at `timeout` instead of blocking CI."""
    return subprocess.run(cmd, cwd=REPO, env={**child_env(), **env}, capture_output=True, text=True, timeout=timeout)


def start(cmd: list[str], log: Path, **env) -> subprocess.Popen:
    """Start in the background; output goes to `log` (a pipe nobody reads could fill up and block)."""
    return subprocess.Popen(cmd, cwd=REPO, env={**child_env(), **env}, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll `condition` until true; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before the condition held")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def records(run_dir: Path, kind: str | None = None) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines if line.strip()]
    return [r for r in recs if kind is None or r["type"] == kind]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir, "train")}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt_root = Path(run_dir) / "checkpoints"
    step = (ckpt_root / "latest").read_text().strip()
    return torch.load(ckpt_root / step / "model.pt", weights_only=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 150) -> int:
    """Wait for a background run; on a hang, make its ranks print their stacks, then fail."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in rank_pids(proc.pid).values():
            os.kill(pid, signal.SIGABRT)
        time.sleep(2)
        proc.kill()
        proc.wait()
        raise AssertionError(f"run hung; its log ends:\n{log.read_text()[-6000:]}") from None


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"rc {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result
