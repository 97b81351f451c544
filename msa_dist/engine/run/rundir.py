"""One live writer per run dir, no silent overwrite of a finished run, and workers that do not
outlive their launcher.

`claim_run_dir()`: a new run (no --resume) refuses a run dir that holds checkpoints, in one line;
with `--overwrite` it first deletes what a run writes there (`RUN_OUTPUTS`), so nothing of the old
run (its `best/`, metrics lines, tokenizer, TensorBoard events) mixes into the new one.

`die_with_launcher()`: torch elastic starts each worker in a session of its own, so a SIGKILL of
the torchrun agent's process group (an OOM kill, `kill -9` of a launcher script) used to leave the
workers training as orphans. A worker asks the kernel for SIGKILL when its parent dies.

`RunDirLock`: RUN_DIR/.lock, locked with a POSIX record lock (`fcntl.lockf`) by global rank 0 for
the run's lifetime and released by the kernel when the process dies, so a crash never leaves it
stale. It must be a regular file: a link there (a run dir from elsewhere) is refused, never
followed. A record lock (unlike `flock`) is not inherited by forked data-loader workers, so a
restarted group does not wait on a dead rank's stragglers. On NFS (v4, or v3 with lockd) record
locks are enforced across hosts; on a filesystem without working locks (some FUSE mounts) the lock
only guards against a second writer on the same host.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import signal
import socket
import stat
from pathlib import Path

from msa_dist.common.atomic import not_regular
from msa_dist.common.errors import MsaDistError

_PR_SET_PDEATHSIG = 1
# What `msa-dist train` (and the report after it) writes in a run dir: --overwrite deletes these.
RUN_OUTPUTS = (
    "checkpoints",
    "metrics.jsonl",
    "config.yaml",
    "run_info.json",
    "tokenizer",
    "text_config",
    "tensorboard",
    "wandb",
    "wandb_run_id",
    "logit_offsets.json",
    "report.md",
    "curves.png",
    "confusion_matrix.png",
)


def claim_run_dir(run_dir: str | Path, overwrite: bool, is_main: bool) -> None:
    """A new run in `run_dir`: MsaDistError if it holds checkpoints, unless `overwrite` (rank 0
    then deletes the old run's outputs; no rank has written anything yet)."""
    if overwrite and not is_main:
        return  # rank 0 may be deleting them right now
    run_dir = Path(run_dir)
    ckpts = run_dir / "checkpoints"
    if not (ckpts.is_dir() and any(ckpts.iterdir())):
        return
    if not overwrite:
        raise MsaDistError(
            f"{run_dir} already holds a run's checkpoints: continue it with --resume auto, "
            "replace it with --overwrite, or train into another --run-dir"
        )
    if is_main:
        for name in RUN_OUTPUTS:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()


def die_with_launcher() -> bool:
    """Under a launcher (LOCAL_RANK set): SIGKILL this process when its parent dies. True if armed."""
    if "LOCAL_RANK" not in os.environ or not hasattr(os, "getppid"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):  # not Linux
        return False
    if os.getppid() != parent:  # the launcher died before the request was in place
        os.kill(os.getpid(), signal.SIGKILL)
    return True


class RunDirLock:
    """Hold RUN_DIR/.lock while training; a second live writer gets a one-line MsaDistError."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.path = Path(run_dir) / ".lock"
        self.enabled = enabled
        self._fd: int | None = None

    def __enter__(self) -> RunDirLock:
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a link planted at .lock (a run dir from elsewhere) is never followed, as
            # the truncate below would empty its target; O_NONBLOCK: a FIFO there does not block.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:  # a read-only or full file system, no permission
            if exc.errno == errno.ELOOP:
                fd = None
            else:
                raise MsaDistError(f"cannot write to the run dir {self.path.parent}: {exc.strerror}") from None
        if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
            if fd is not None:
                os.close(fd)
            raise MsaDistError(
                f"{self.path} is {not_regular(self.path)}, not a lock file: not followed (a run dir "
                "from elsewhere?); delete it and run again"
            )
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise MsaDistError(f"cannot lock {self.path}: {exc.strerror}") from None
            raise MsaDistError(
                f"{self.path.parent} is in use by a live run ({holder(self.path)}): "
                "wait for it to end or stop it, or train into another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"host={socket.gethostname()} pid={os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the record lock; the file stays (it may be locked again)
            self._fd = None


def holder(lock_path: Path) -> str:
    """'host=H pid=P' as written by the holder of `lock_path`."""
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return text or "host and pid unknown"
