"""Which DeepSpeed (and DCP) checkpoints were made here: an HMAC of their files under a key kept outside any run dir.

DeepSpeed reads its own files with an unrestricted loader that runs whatever a file asks for, so
msa-dist lets it read a DeepSpeed checkpoint only if this user on this machine saved
it, or with `train --trust-checkpoint`; the same holds for the FSDP backend's DCP folder, whose
`.metadata` index torch.distributed.checkpoint deserialises the same unrestricted way. Where a checkpoint lies
says nothing (a run dir can be downloaded whole); what proves it is `trust.json` beside the
DeepSpeed (or DCP) folder: an HMAC-SHA256, under a key only this user can read, of the name, size
and SHA-256 of every file in the folder. Rank 0 writes it after a save (and after a universal
conversion); a resume (`auto`, a torchrun restart, or a named directory) checks it before DeepSpeed
(or DCP) reads anything. Each costs one pass over the files.

The key: KEY_FILE in $MSA_DIST_CONFIG_DIR, else $XDG_CONFIG_HOME/msa-dist, else ~/.config/msa-dist;
32 random bytes, created (mode 0600) on first use. Ranks on other hosts need the same key: a shared
home, or MSA_DIST_CONFIG_DIR on a shared disk.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
from pathlib import Path

from msa_dist.common.atomic import write_atomic
from msa_dist.common.errors import MsaDistError

log = logging.getLogger(__name__)
RECORD = "trust.json"  # beside the DeepSpeed folder it vouches for
FOLDER = "deepspeed"  # that folder in a step directory (the DeepSpeed backend's TAG)
READERS = {"deepspeed": "DeepSpeed", "fsdp": "torch.distributed.checkpoint"}  # who unpickles which folder
KEY_FILE = "checkpoint.key"
_CHUNK = 1 << 20


def key_path() -> Path:
    """Where this user's checkpoint key lives (see the module docstring)."""
    if os.environ.get("MSA_DIST_CONFIG_DIR"):
        return Path(os.environ["MSA_DIST_CONFIG_DIR"]) / KEY_FILE
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "msa-dist" / KEY_FILE


def _key(create: bool) -> bytes | None:
    """This user's key; made on first use when `create` (a race with another rank: its key wins)."""
    path = key_path()
    if create and not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:  # an unwritable config dir must not fail the save itself
            log.warning(
                "cannot create the checkpoint key %s (%s): a resume of this checkpoint will need --trust-checkpoint",
                path,
                exc.strerror or exc,
            )
            return None
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(32))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        key = handle.read(64)
    return key if len(key) == 32 else None  # a key still being written by another rank is not a key


def _inventory(folder: Path) -> list | None:
    """[relative name, size, sha256] of every file under `folder`, sorted; None if it holds anything
    else (a link, a FIFO): such a folder is never vouched for."""
    if folder.is_symlink():
        return None
    rows = []
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            return None
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
        rows.append([path.relative_to(folder).as_posix(), path.stat().st_size, digest.hexdigest()])
    return rows


def _mac(key: bytes, name: str, rows: list) -> str:
    message = json.dumps({"folder": name, "files": rows}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def sign(root: Path, name: str) -> None:
    """Vouch for `root/name` (a DeepSpeed folder this process's run just wrote) in `root/trust.json`."""
    rows = _inventory(Path(root) / name)
    key = _key(create=True)
    if rows is None or key is None:
        return  # unverifiable: a resume then asks for --trust-checkpoint, which is safe
    record = {"folder": name, "files": rows, "hmac": _mac(key, name, rows)}
    write_atomic(Path(root) / RECORD, json.dumps(record, indent=1))


def record_for(name: str, rows: list) -> bytes | None:
    """trust.json for a folder known by its [name, size, sha256] rows (a checkpoint whose ranks each
    uploaded their part to a store: rank 0 vouches for the whole from the commit's list); None without a key."""
    key = _key(create=True)
    if key is None:
        return None
    return json.dumps({"folder": name, "files": rows, "hmac": _mac(key, name, rows)}, indent=1).encode()


def made_here(root: Path, name: str) -> bool:
    """True if `root/trust.json` vouches, under this user's key, for `root/name` exactly as it is now."""
    root = Path(root)
    key = _key(create=False)
    if key is None or (root / RECORD).is_symlink() or not (root / RECORD).is_file():
        return False
    try:
        record = json.loads((root / RECORD).read_bytes()[: 1 << 24])
        claimed = str(record["hmac"])
    except (ValueError, KeyError, TypeError, OSError):
        return False
    rows = _inventory(root / name)
    return rows is not None and hmac.compare_digest(claimed, _mac(key, name, rows))


def require_made_here(step_dir: Path, name: str, trust: bool, what: str) -> None:
    """MsaDistError (one line) unless `step_dir/name` holds no DeepSpeed (or DCP) checkpoint, `trust`,
    or it was made here."""
    step_dir = Path(step_dir)
    if trust or not (step_dir / name).is_dir() or made_here(step_dir, name):
        return
    reader = READERS.get(name, name)
    raise MsaDistError(
        f"{what}: {step_dir} holds a {reader} checkpoint that was not saved by this user on this "
        f"machine (its {RECORD} does not verify under {key_path()}), and {reader} unpickles its "
        "files, which can run code: pass --trust-checkpoint if you made it or trust who did, or "
        f"start a new run from its plain weights with train.init_from={step_dir / 'model.pt'}"
    )
