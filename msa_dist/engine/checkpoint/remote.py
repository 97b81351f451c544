"""Checkpoints of a run dir on an object store: each rank uploads its part, rank 0 commits it.

Every rank saves into its own local scratch as files.py does for a local run dir (atomically), then
uploads the files it wrote under RUN_URL/checkpoints/step-N/ with a list of them (`.rank-R.json`:
size and sha256 of each). When every rank's upload went through, rank 0 merges the lists into
`commit.json`, written last, then points `latest` at the step and deletes the steps past
`keep_last` (their commit.json first). A step without commit.json is torn (a kill during the
upload) and is never resumed from; neither is one whose objects' sizes, or downloaded bytes'
sha256, differ from what commit.json lists.

`fetch_latest` downloads the newest complete step into a local checkpoints/ folder; what loads
it afterwards (safe_load.py's checks, trust.py's rules for DeepSpeed's pickles) is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from msa_dist.common import atomic
from msa_dist.common.errors import MsaDistError
from msa_dist.engine.checkpoint import trust
from msa_dist.engine.run.store import RunStore, StoreError

log = logging.getLogger(__name__)
COMMIT = "commit.json"
_STEP = re.compile(r"step-\d+")
_PART = re.compile(r"\.rank-(\d+)\.json")


def file_table(folder: Path) -> dict[str, dict]:
    """{relative name: {size, sha256}} of every regular file under `folder`."""
    table = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            table[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    return table


def upload_part(store: RunStore, step_dir: Path, rank: int) -> int:
    """Upload this rank's files of `step_dir`, then the list of them; returns the bytes uploaded."""
    table = file_table(step_dir)
    prefix = f"checkpoints/{step_dir.name}"
    for name in table:
        store.put_file(step_dir / name, f"{prefix}/{name}")
    store.write(f"{prefix}/.rank-{rank}.json", json.dumps(table).encode())
    return sum(entry["size"] for entry in table.values())


def commit(store: RunStore, step_name: str, world_size: int, keep_last: int) -> None:
    """Rank 0, after every rank's upload: commit.json (every file, size, sha256), `latest`, pruning."""
    prefix = f"checkpoints/{step_name}"
    files: dict[str, dict] = {}
    for rank in reversed(range(world_size)):  # rank 0's entry wins a name two ranks wrote
        raw = store.read(f"{prefix}/.rank-{rank}.json")
        if raw is None:
            raise StoreError(f"{store.where(prefix)}: the upload of rank {rank} left no list of its files")
        files.update(json.loads(raw))
    _vouch(store, prefix, files)
    store.write(f"{prefix}/{COMMIT}", json.dumps({"step": step_name, "files": files}, indent=1).encode())
    store.write("checkpoints/latest", step_name.encode())
    steps = [name for name in store.children("checkpoints") if _STEP.fullmatch(name)]
    for old in sorted(steps)[: -max(keep_last, 1)]:
        store.delete(f"checkpoints/{old}/{COMMIT}")  # no longer complete before anything of it goes
        store.remove(f"checkpoints/{old}")


def _vouch(store: RunStore, prefix: str, files: dict) -> None:
    """DeepSpeed's folder holds every rank's files only on the store: rank 0 signs the whole
    (trust.py) from the listed sizes and sha256s, and lists trust.json with the rest."""
    folder = trust.FOLDER + "/"
    rows = sorted([rel[len(folder) :], e["size"], e["sha256"]] for rel, e in files.items() if rel.startswith(folder))
    record = trust.record_for(trust.FOLDER, rows) if rows else None
    if record is not None:
        store.write(f"{prefix}/{trust.RECORD}", record)
        files[trust.RECORD] = {"size": len(record), "sha256": hashlib.sha256(record).hexdigest()}


def upload_best(store: RunStore, best_dir: Path) -> None:
    """best/ (rank 0): model.pt, then metrics.json."""
    for name in ("model.pt", "metrics.json"):
        if (best_dir / name).is_file():
            store.put_file(best_dir / name, f"checkpoints/best/{name}")


def committed_steps(store: RunStore) -> list[str]:
    """Step names with a commit.json, `latest`'s first, then newest first."""
    names = [n for n in store.children("checkpoints") if _STEP.fullmatch(n)]
    pointer = (store.read("checkpoints/latest") or b"").decode("utf-8", "replace").strip()
    order = ([pointer] if pointer in names else []) + sorted((n for n in names if n != pointer), reverse=True)
    return order


def fetch_latest(store: RunStore, ckpt_root: Path) -> Path | None:
    """Download the newest complete step (commit.json there, every listed object of its size, every
    downloaded file of its sha256) into `ckpt_root` and point the local `latest` at it; None if
    the store holds none. A step that fails the checks is skipped with a warning."""
    for name in committed_steps(store):
        raw = store.read(f"checkpoints/{name}/{COMMIT}")
        if raw is None:
            continue  # torn: its upload never finished
        try:
            files = json.loads(raw)["files"]
            reason = _download(store, name, files, ckpt_root)
        except (ValueError, KeyError, TypeError):
            reason = f"its {COMMIT} is not readable"
        if reason is None:
            atomic.write_atomic(ckpt_root / "latest", name)
            return ckpt_root / name
        log.warning("%s/checkpoints/%s is not usable (%s): trying the one before", store.url, name, reason)
    return None


def _download(store: RunStore, name: str, files: dict, ckpt_root: Path) -> str | None:
    """Download step `name` into ckpt_root/name (via a temp folder); why not, or None when it is whole."""
    sizes = store.sizes(f"checkpoints/{name}")
    for rel, entry in files.items():
        if sizes.get(rel) != entry["size"]:
            return f"{rel} holds {sizes.get(rel)} bytes, {entry['size']} committed"
        if rel.startswith("/") or ".." in rel.split("/"):
            return f"{rel!r} is not a name inside the step"
    tmp = atomic.fresh_dir(ckpt_root / f".dl-{name}")
    for rel in files:
        store.get_file(f"checkpoints/{name}/{rel}", tmp / rel)
    got = file_table(tmp)
    bad = [rel for rel, entry in files.items() if got.get(rel, {}).get("sha256") != entry["sha256"]]
    if bad:
        atomic.remove(tmp)
        return f"{bad[0]} differs from its committed sha256"
    atomic.swap_dir(tmp, ckpt_root / name)
    return None


def upload_tree(store: RunStore, local: Path, name: str) -> None:
    """Upload a run file or folder (metrics.jsonl, tokenizer/, ...) to the same name; nothing if absent."""
    path = local / name
    if path.is_symlink():
        raise MsaDistError(f"{path} is a symbolic link: not uploaded")
    if path.is_file():
        store.put_file(path, name)
    elif path.is_dir():
        for rel in file_table(path):
            store.put_file(path / rel, f"{name}/{rel}")


def download_tree(store: RunStore, name: str, local: Path) -> None:
    """The store's file or folder `name` into local/name (replacing it); nothing if the store has none."""
    sizes = store.sizes(name)
    if set(sizes) <= {""}:  # a file (listed as itself), or nothing
        data = store.read(name)
        if data is not None:
            atomic.write_atomic(local / name, data)
        return
    with atomic.atomic_dir(local / name) as fresh:
        for rel in sizes:
            if rel.startswith("/") or ".." in rel.split("/") or os.sep in rel.replace("/", ""):
                raise MsaDistError(f"{store.where(name)}/{rel}: not a name inside the run dir")
            store.get_file(f"{name}/{rel}", fresh / rel)
