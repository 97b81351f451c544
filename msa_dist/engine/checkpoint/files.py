"""Checkpoint directories: atomic writes, `latest` / `best` pointers, pruning, RNG states.

Layout under RUN_DIR/checkpoints/:
  step-000120/   model.pt (plain weights, read by evaluate/predict without any backend),
                 the backend's own state files, rng-rank{R}.pt, client.json; with DeepSpeed,
                 deepspeed/ and trust.json (the HMAC that says this user saved it: trust.py);
                 with FSDP, fsdp/ (DCP's shards and index) and trust.json
  best/          model.pt + metrics.json of the best evaluation so far
  latest         text file naming the newest complete step directory (a `step-N` name: nothing
                 outside checkpoints/ is followed)
A directory is written under a temporary name and renamed when complete (client.json, written
last, marks it complete), and `latest` is replaced atomically after that: a kill during a save
leaves the previous checkpoint usable, and so does a full disk (the half-written directory is
removed). Reading never runs code: see `safe_load.py`.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from msa_dist.common import atomic
from msa_dist.common.errors import USER_OS_ERRORS, MsaDistError
from msa_dist.common.limits import read_input
from msa_dist.engine.backends import format_folder, saved_format
from msa_dist.engine.checkpoint import trust
from msa_dist.engine.checkpoint.safe_load import UnreadableFile, load_tensors

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"(\.old-)?step-(\d+)")  # complete step directories (.old-: a kill between two renames)


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


def save_checkpoint(
    backend, ckpt_root: Path, step: int, client_state: dict, keep_last: int, private: bool = False
) -> Path:
    """Save on every rank (DeepSpeed needs all of them); rank 0 publishes and prunes. `private`: each
    rank has a ckpt_root of its own (a run dir on a store: local scratch), holding its part only."""
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f".tmp-step-{step:07d}"
    try:
        _save_and_publish(backend, ckpt_root, tmp, final, client_state, keep_last, private)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # what was written of it: its space is needed
        if exc.errno not in USER_OS_ERRORS:
            raise
        raise MsaDistError(
            f"cannot save the checkpoint of step {step} in {ckpt_root}: {exc.strerror} "
            f"({exc.filename or tmp}); the previous checkpoint is untouched: make room and resume "
            "with --resume auto"
        ) from None
    return final


def _save_and_publish(
    backend, ckpt_root: Path, tmp: Path, final: Path, client_state: dict, keep_last: int, private: bool
) -> None:
    if backend.env.is_main or private:
        atomic.fresh_dir(tmp)
    backend.sync_buffers()  # ranks agree on BatchNorm statistics, so any rank's restore is rank 0's
    backend.barrier()
    backend.save_state(tmp, client_state)
    torch.save(rng_state(), tmp / f"rng-rank{backend.env.rank}.pt")
    backend.barrier()
    if backend.env.is_main:
        if folder := format_folder(tmp):  # DeepSpeed's pickles, DCP's index: vouch for them (trust.py)
            trust.sign(tmp, folder)
        # client.json is written last: a directory that has it is complete.
        # (without the config, and without the EMA's weights: tensors, kept in the backend's state)
        (tmp / "client.json").write_text(
            json.dumps({k: v for k, v in client_state.items() if k not in ("config", "ema")}, indent=1, default=str)
        )
        atomic.swap_dir(tmp, final)  # `final` exists when the same step is saved again (epoch end after a step)
        atomic.write_atomic(ckpt_root / "latest", final.name)
        _prune(ckpt_root, keep_last)
    elif private:
        atomic.swap_dir(tmp, final)
        _prune(ckpt_root, keep_last)
    backend.barrier()


def _prune(ckpt_root: Path, keep_last: int) -> None:
    steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in steps[: -max(keep_last, 1)]:
        shutil.rmtree(old, ignore_errors=True)


def save_best(backend, ckpt_root: Path, step_dir: Path, metrics: dict) -> None:
    """Copy the step's plain weights to best/ (rank 0), atomically."""
    if backend.env.is_main:
        tmp = atomic.fresh_dir(ckpt_root / ".tmp-best")
        shutil.copy2(step_dir / "model.pt", tmp / "model.pt")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
        atomic.swap_dir(tmp, ckpt_root / "best")
    backend.barrier()


def latest_checkpoint(ckpt_root: Path, check: Callable[[Path], None] | None = None) -> Path | None:
    """The step directory `latest` names or, if it is gone, incomplete (a kill during a save) or
    fails `check` with `UnreadableFile`, the newest complete one that passes, with a warning.
    None if there is no checkpoint; MsaDistError if there are some and none is usable."""
    ckpt_root = Path(ckpt_root)
    named = _pointer(ckpt_root)
    complete = sorted(
        (p for p in ckpt_root.glob("*step-*") if _complete(ckpt_root, p)),
        key=lambda p: int(STEP_DIR.fullmatch(p.name).group(2)),
        reverse=True,
    )
    candidates = ([ckpt_root / named] if named else []) + [p for p in complete if p.name != named]
    skipped = []
    for path in candidates:
        if not _complete(ckpt_root, path):
            skipped.append(f"{ckpt_root / 'latest'} names {named}, which is gone or incomplete")
            continue
        if check is not None:
            try:
                check(path)
            except UnreadableFile as exc:
                skipped.append(str(exc))
                continue
        for reason in skipped:
            log.warning("%s: using %s instead", reason, path.name)
        return path
    if skipped:
        raise MsaDistError(
            f"no usable checkpoint in {ckpt_root} ({skipped[0]}; {len(candidates)} tried): "
            "start afresh with --overwrite, or --resume a step directory that loads"
        )
    return None


def _pointer(ckpt_root: Path) -> str | None:
    """The name in `latest`, which must be a step directory directly inside checkpoints/."""
    pointer = ckpt_root / "latest"
    if pointer.is_symlink():  # never read what it points to (its text would be quoted below)
        raise MsaDistError(f"{pointer} is a symbolic link, not the file msa-dist writes: not followed; delete it")
    if not pointer.is_file():
        return None
    with pointer.open("rb") as handle:  # a step name is short: never read more of whatever this is
        name = handle.read(256).decode("utf-8", "replace").strip()
    if not re.fullmatch(r"step-\d+", name):
        raise MsaDistError(
            f"{pointer} names {name!r}, not a step-NNNNNNN directory inside {ckpt_root}: "
            "not followed (a run dir from elsewhere, or edited?)"
        )
    return name


def _complete(ckpt_root: Path, path: Path) -> bool:
    """A step directory inside ckpt_root (no link out of it) with client.json, written last."""
    if not STEP_DIR.fullmatch(path.name) or path.is_symlink():
        return False
    return path.resolve().parent == ckpt_root.resolve() and (path / "client.json").is_file()


def check_readable(step_dir: Path) -> None:
    """Our files of a step directory load as tensors and plain data (mapped, not read): else
    `UnreadableFile` (truncated, torn) or `UnsafeFile` (a pickle payload). DeepSpeed's own files
    and DCP's are not ours to read: see docs/security.md."""
    read_client(step_dir)
    names = ["model.pt", *sorted(p.name for p in step_dir.glob("rng-rank*.pt"))]
    if saved_format(step_dir) in ("torch", "fsdp"):
        names.append("state.pt")
    for name in names:
        load_tensors(step_dir / name, mmap=True)


def read_client(ckpt_dir: Path) -> dict:
    """client.json of a step directory: train state, layout (world size, backend, ...)."""
    path = Path(ckpt_dir) / "client.json"
    if not path.is_file():
        raise MsaDistError(f"{ckpt_dir} is not a complete checkpoint (no client.json)")
    try:
        client = json.loads(path.read_bytes())
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UnreadableFile(f"{path} is not readable JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(client, dict):
        raise UnreadableFile(f"{path} holds {type(client).__name__}, not a JSON object")
    return client


def load_checkpoint(backend, ckpt_dir: Path) -> dict:
    """Restore backend state and this rank's RNG; returns the client state."""
    client = backend.load_state(ckpt_dir)
    rng_file = ckpt_dir / f"rng-rank{backend.env.rank}.pt"
    if rng_file.exists():
        set_rng_state(load_tensors(rng_file))
    return client


# What a saved tokenizer folder may hold (transformers' file names); anything else is left behind.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
MAX_TOKENIZER_FILE_BYTES = 64 << 20  # a large tokenizer.json (250k tokens) is ~20 MB


def source_run_dir(weights: str) -> Path:
    """The run dir of train.init_from's weights: the folder holding the `checkpoints/` above them,
    else the weights' own folder (a consolidated model.pt), never any further parent."""
    path = Path(weights).absolute()
    for parent in path.parents:
        if parent.name == "checkpoints":
            return parent.parent
    return path.parent


def copy_source_tokenizer(weights: str, run_dir: Path) -> None:
    """train.init_from: token ids must mean what they meant to the weights, so reuse that run's tokenizer
    (its regular files of known names only, each of bounded size; a link there is one line)."""
    source = source_run_dir(weights) / "tokenizer"
    if source.is_symlink():
        raise MsaDistError(f"train.init_from: {source} is a symbolic link; copy the tokenizer folder itself there")
    if not source.is_dir() or (run_dir / "tokenizer").exists():
        return
    files = {}
    for name in TOKENIZER_FILES:
        path = source / name
        if path.is_symlink():
            raise MsaDistError(
                f"train.init_from: {path} is a symbolic link, not a tokenizer file; replace it by the file"
            )
        if not path.exists():
            continue
        try:
            files[name] = read_input(path, MAX_TOKENIZER_FILE_BYTES)
        except OSError as exc:
            raise MsaDistError(f"train.init_from: cannot copy {path}: {exc.strerror or exc}") from None
    ignored = sorted(p.name for p in source.iterdir() if p.name not in files)
    if ignored:
        log.warning("train.init_from: not copied from %s (not a tokenizer file): %s", source, ", ".join(ignored[:5]))
    if files:
        atomic.remove(run_dir / "tokenizer")  # a dangling link
        with atomic.atomic_dir(run_dir / "tokenizer") as fresh:
            for name, data in files.items():
                atomic.write_atomic(fresh / name, data)


def load_init_weights(model: torch.nn.Module, path: str) -> None:
    """train.init_from: start a new run from plain weights (e.g. a consolidated DeepSpeed model.pt)."""
    if not Path(path).is_file():
        raise MsaDistError(f"train.init_from: no such file: {path}")
    try:
        weights = load_tensors(path)
    except MsaDistError as exc:
        raise MsaDistError(f"train.init_from: {exc}") from None
    if not isinstance(weights, dict):
        raise MsaDistError(f"train.init_from={path} holds a {type(weights).__name__}, not a state_dict of weights")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise MsaDistError(f"train.init_from={path} does not fit this model: {str(exc).splitlines()[0]}") from None


def model_weights_path(run_dir: Path, which: str = "best") -> Path:
    """The plain model.pt that evaluate / predict read: `best`, `latest`, or a step dir name."""
    ckpt_root = Path(run_dir) / "checkpoints"
    if not re.fullmatch(r"best|latest|step-\d+", which):
        raise MsaDistError(f"--checkpoint {which!r}: use best, latest or a step-NNNNNNN directory name")
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
