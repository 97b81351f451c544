"""Checkpoint directories: atomic writes, `latest` / `best` pointers, pruning, RNG states.

Layout under RUN_DIR/checkpoints/:
  step-000120/   model.pt (plain weights, read by evaluate/predict without any backend),
                 the backend's own state files, rng-rank{R}.pt, client.json
  best/          model.pt + metrics.json of the best evaluation so far
  latest         text file naming the newest complete step directory
A directory is written under a temporary name and renamed when complete (client.json, written
last, marks it complete), and `latest` is replaced atomically after that: a kill during a save
leaves the previous checkpoint usable.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Optional

import torch

from msa_dist.errors import MsaDistError


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(backend, ckpt_root: Path, step: int, client_state: dict, keep_last: int) -> Path:
    """Save on every rank (DeepSpeed needs all of them); rank 0 publishes and prunes."""
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f".tmp-step-{step:07d}"
    if backend.env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    backend.sync_buffers()  # ranks agree on BatchNorm statistics, so any rank's restore is rank 0's
    backend.barrier()
    backend.save_state(tmp, client_state)
    torch.save(rng_state(), tmp / f"rng-rank{backend.env.rank}.pt")
    backend.barrier()
    if backend.env.is_main:
        # client.json is written last: a directory that has it is complete.
        # (without the config, and without the EMA's weights: tensors, kept in the backend's state)
        (tmp / "client.json").write_text(json.dumps(
            {k: v for k, v in client_state.items() if k not in ("config", "ema")}, indent=1, default=str))
        old = ckpt_root / f".old-step-{step:07d}"
        if final.exists():  # the same step saved again (e.g. epoch end after a step save)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _atomic_write_text(ckpt_root / "latest", final.name)
        shutil.rmtree(old, ignore_errors=True)
        _prune(ckpt_root, keep_last)
    backend.barrier()
    return final


def _prune(ckpt_root: Path, keep_last: int) -> None:
    steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in steps[:-max(keep_last, 1)]:
        shutil.rmtree(old, ignore_errors=True)


def save_best(backend, ckpt_root: Path, step_dir: Path, metrics: dict) -> None:
    """Copy the step's plain weights to best/ (rank 0), atomically."""
    if backend.env.is_main:
        tmp = ckpt_root / ".tmp-best"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copy2(step_dir / "model.pt", tmp / "model.pt")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
        old = ckpt_root / ".old-best"
        shutil.rmtree(old, ignore_errors=True)
        if (ckpt_root / "best").exists():
            os.replace(ckpt_root / "best", old)
        os.replace(tmp, ckpt_root / "best")
        shutil.rmtree(old, ignore_errors=True)
    backend.barrier()


def latest_checkpoint(ckpt_root: Path) -> Optional[Path]:
    """The step directory `latest` names or, if a kill interrupted a save, the newest complete one."""
    pointer = ckpt_root / "latest"
    if pointer.is_file():
        path = ckpt_root / pointer.read_text().strip()
        if (path / "client.json").is_file():
            return path
    complete = [p for p in ckpt_root.glob("*step-*") if (p / "client.json").is_file() and not p.name.startswith(".tmp")]
    return max(complete, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def read_client(ckpt_dir: Path) -> dict:
    """client.json of a step directory: train state, layout (world size, backend, ...)."""
    path = Path(ckpt_dir) / "client.json"
    if not path.is_file():
        raise MsaDistError(f"{ckpt_dir} is not a complete checkpoint (no client.json)")
    return json.loads(path.read_text())


def load_checkpoint(backend, ckpt_dir: Path) -> dict:
    """Restore backend state and this rank's RNG; returns the client state."""
    client = backend.load_state(ckpt_dir)
    rng_file = ckpt_dir / f"rng-rank{backend.env.rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
    return client


def copy_source_tokenizer(weights: str, run_dir: Path) -> None:
    """train.init_from: token ids must mean what they meant to the weights, so reuse that run's tokenizer."""
    source = next((p / "tokenizer" for p in Path(weights).resolve().parents if (p / "tokenizer").is_dir()), None)
    if source is not None and not (run_dir / "tokenizer").exists():
        shutil.copytree(source, run_dir / "tokenizer")


def load_init_weights(model: torch.nn.Module, path: str) -> None:
    """train.init_from: start a new run from plain weights (e.g. a consolidated DeepSpeed model.pt)."""
    if not Path(path).is_file():
        raise MsaDistError(f"train.init_from: no such file: {path}")
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except RuntimeError as exc:
        raise MsaDistError(f"train.init_from={path} does not fit this model: {str(exc).splitlines()[0]}") from None


def model_weights_path(run_dir: Path, which: str = "best") -> Path:
    """The plain model.pt that evaluate / predict read: `best`, `latest`, or a step dir name."""
    ckpt_root = Path(run_dir) / "checkpoints"
    if which == "latest":
        step = latest_checkpoint(ckpt_root)
        path = step / "model.pt" if step else None
    else:
        path = ckpt_root / which / "model.pt"
    if path is None or not path.is_file():
        if which == "best" and latest_checkpoint(ckpt_root):
            return model_weights_path(run_dir, "latest")
        raise MsaDistError(f"no '{which}' checkpoint in {run_dir}: is it a finished `msa-dist train` run directory?")
    return path
