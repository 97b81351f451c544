"""RUN_DIR/run_info.json: what a run was made from (code, command, machines, versions, data).

Written by rank 0 when a run starts; a resumed run keeps the first session's record and appends
its own to `resumed`. `evaluate` / `predict` compare the shards they read with the manifest hash
recorded here and warn when the val split is not the data the run was validated on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

from msa_dist.common.atomic import write_atomic
from msa_dist.common.errors import MsaDistError
from msa_dist.common.jsonfile import read_json_object
from msa_dist.common.urls import redact_text, redact_url
from msa_dist.data.format.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

RUN_INFO = "run_info.json"
MAX_DIFF_BYTES = 20_000  # a larger uncommitted diff is summarised by its size only
PACKAGES = ("torch", "transformers", "deepspeed", "webdataset", "tokenizers", "torchvision", "timm")


def _manifest_bytes(shards: str | Path) -> bytes | None:
    """The raw manifest.json of a shard folder or URL (None when it cannot be read)."""
    from msa_dist.data.stores import open_store

    try:
        return open_store(str(shards)).read(MANIFEST_NAME)
    except (OSError, MsaDistError):
        return None


def _manifest(shards: str | Path) -> dict:
    raw = _manifest_bytes(shards)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def manifest_sha256(shards: str | Path) -> str | None:
    """sha256 of the shard set's manifest.json bytes (None when it cannot be read)."""
    raw = _manifest_bytes(shards)
    return hashlib.sha256(raw).hexdigest() if raw is not None else None


def split_sha256(shards: str | Path, split: str) -> str | None:
    """sha256 of one split's shard list (names, sizes, checksums) in the manifest: the split's data.

    Unlike the whole manifest's hash it does not change when the same shards are copied elsewhere
    (the manifest records the folder it was built in)."""
    try:
        info = _manifest(shards)["splits"][split]
        # a split written as a binary shard table (data/format/shard_table.py): the table's checksum stands for it
        entries = info["shard_table"]["sha256"] if "shard_table" in info else info["shards"]
    except (KeyError, TypeError):
        return None
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def shard_options(shards: str | Path) -> dict:
    """How the shards stored images (`shards build --image-size/--jpeg-quality`): raw predict repeats it."""
    options = _manifest(shards).get("options")
    if not isinstance(options, dict):
        return {}
    return {"image_size": options.get("image_size", 0), "jpeg_quality": options.get("jpeg_quality")}


def git_info(cwd: str | Path = ".") -> dict:
    """Commit, dirty flag and (when small) the uncommitted diff of the repository holding `cwd`."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None}
    diff = git("diff", "HEAD") or ""
    status = git("status", "--porcelain", "--untracked-files=no") or ""
    info = {"commit": commit.strip(), "dirty": bool(status.strip()), "diff_bytes": len(diff.encode())}
    if diff and len(diff.encode()) <= MAX_DIFF_BYTES:
        info["diff"] = diff
    return info


def versions() -> dict:
    """Versions of python, the libraries that change numerics or data reading, CUDA and NCCL."""
    out = {"python": platform.python_version(), "msa_dist": _version("msa-dist")}
    for name in PACKAGES:
        out[name] = _version(name)
    import torch

    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    try:
        nccl = torch.cuda.nccl.version() if torch.cuda.is_available() else None
        out["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
    except (AttributeError, RuntimeError):
        out["nccl"] = None
    return out


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def gather_hosts(world_size: int) -> list[str]:
    """Every rank's host name, in rank order (a collective when a process group is up)."""
    host = socket.gethostname()
    import torch.distributed as dist

    if world_size > 1 and dist.is_available() and dist.is_initialized():
        hosts: list = [None] * dist.get_world_size()
        dist.all_gather_object(hosts, host)
        return hosts
    return [host]


def session_info(cfg, env, backend_name: str) -> dict:
    """This session's command, machines, world layout, versions and data."""
    hosts = gather_hosts(env.world_size)
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.argv[0]).name, *map(redact_text, sys.argv[1:])],  # no secret in a URL
        "cwd": os.getcwd(),
        "git": git_info(Path(__file__).resolve().parent),
        "hosts": sorted(set(hosts)),
        "world": {
            "world_size": env.world_size,
            "nodes": env.nodes,
            "local_world_size": env.local_world_size,
            "rank_hosts": hosts,
            "device": env.device.type,
            "backend": backend_name,
        },
        "versions": versions(),
        "data": {
            "shards": redact_url(str(cfg.data.shards)),
            "manifest_sha256": manifest_sha256(cfg.data.shards),
            "val_sha256": split_sha256(cfg.data.shards, "val"),
            "shard_options": shard_options(cfg.data.shards),
        },
    }


def write_run_info(cfg, run_dir: str | Path, env, backend_name: str) -> None:
    """All ranks call this (it gathers host names); rank 0 writes or extends RUN_DIR/run_info.json."""
    info = session_info(cfg, env, backend_name)
    if not env.is_main:
        return
    path = Path(run_dir) / RUN_INFO
    if path.exists() or path.is_symlink():  # a broken one (or a folder, a link) is one line
        first = read_run_info(run_dir) or {}
        resumed = first.get("resumed")
        first["resumed"] = [*(resumed if isinstance(resumed, list) else []), info]
        info = first
    write_atomic(path, json.dumps(info, indent=1) + "\n")


def read_run_info(run_dir: str | Path) -> dict | None:
    """RUN_DIR/run_info.json, or None for a run made before it existed; one line naming it when broken."""
    path = Path(run_dir) / RUN_INFO
    if not path.exists() and not path.is_symlink():
        return None
    info = read_json_object(path)
    for section in ("data", "git"):
        if not isinstance(info.get(section, {}), dict):
            raise MsaDistError(f"{path}: '{section}' is not a JSON object: fix or delete the file")
    if not isinstance(info.get("data", {}).get("shard_options", {}), dict):
        raise MsaDistError(f"{path}: 'data.shard_options' is not a JSON object: fix or delete the file")
    return info


def check_shards(run_dir: str | Path, shard_dir: str | Path, split: str) -> str | None:
    """A one-line warning when `split` of `shard_dir` is not the val data the run was trained with.

    Only the val split is checked: the test split (or a custom one) is expected to be new data.
    Returns the message (also logged), or None.
    """
    info = read_run_info(run_dir)
    if split != "val" or not info:
        return None
    trained = info.get("data", {})
    if trained.get("val_sha256") is None or trained.get("val_sha256") == split_sha256(shard_dir, split):
        return None
    message = (
        f"the val split of {shard_dir} differs from the one {run_dir} was trained with "
        f"({trained.get('shards')}, manifest sha256 {str(trained.get('manifest_sha256'))[:12]}): "
        "metrics are not comparable with the run's"
    )
    log.warning(message)
    return message
