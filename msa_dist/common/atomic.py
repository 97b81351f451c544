"""Files and folders that appear whole or not at all, and never written through a planted link.

A run dir (or a shard folder, an experiment's folder) can be downloaded whole, links included:
`open(path, "w")` follows a link at `RUN_DIR/report.md` and empties whatever it points to,
outside the run dir. So msa-dist writes every file it names there through these functions:

- `write_atomic` / `atomic_open`: a temp file beside the target (one name scheme everywhere:
  `.NAME.PID.tmp`), created with O_EXCL|O_NOFOLLOW after whatever lay at that name (a link
  included) is removed, then `os.replace` over the target, which replaces a link itself, never
  what it points to; readers see the old file or the new one, never half of it;
- `open_append`: O_NOFOLLOW, and only a regular file: anything else is refused in one line;
- `fresh_dir` / `atomic_dir` / `swap_dir`: folders made afresh (whatever lay at the name, of a
  link only the link, is removed first) and swapped in whole.

Links to directories a user makes on purpose (`checkpoints/` on another disk) are still followed:
see docs/security.md.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from msa_dist.common.errors import MsaDistError

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def temp_path(path: str | Path) -> Path:
    """The temp name beside `path` that this process writes before replacing `path`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove(path: str | Path) -> None:
    """Delete whatever lies at `path`: a link (never its target), a file or a folder; nothing if none."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """A new temp file that replaces `path` when the block ends without error (text: UTF-8)."""
    path = Path(path)
    tmp = temp_path(path)
    remove(tmp)
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    handle = os.fdopen(os.open(tmp, _NEW, 0o666), mode, **kwargs)
    try:
        with handle:
            yield handle
        try:
            os.replace(tmp, path)
        except IsADirectoryError:  # a folder planted where a run file belongs
            raise MsaDistError(f"{path} is a folder, not a file: move it away") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` through a new temp file; returns `path`."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
    return Path(path)


def open_append(path: str | Path) -> IO:
    """`path` opened to append text (created if missing); a link or a non-regular file there is one line."""
    try:  # O_NONBLOCK: a FIFO planted there fails at once instead of waiting for a reader
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO):
            raise
        fd = None
    if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd is not None:
            os.close(fd)
        raise MsaDistError(
            f"{path} is {not_regular(Path(path))}, not a regular file: not written through "
            "(a run dir from elsewhere?); delete it and run again"
        )
    return os.fdopen(fd, "a", encoding="utf-8")


def not_regular(path: Path) -> str:
    """What lies at `path` in a few words ('a symbolic link to X', 'a FIFO', ...)."""
    if path.is_symlink():
        return f"a symbolic link to {os.readlink(path)}"
    mode = path.lstat().st_mode
    return "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a special file"


def fresh_dir(path: str | Path) -> Path:
    """An empty folder at `path` (whatever lay there, a link included, removed first)."""
    path = Path(path)
    remove(path)
    path.mkdir(parents=True)
    return path


def swap_dir(tmp: str | Path, final: str | Path) -> None:
    """Put the finished folder `tmp` at `final`. An older `final` is moved aside first and removed
    after, so a crash leaves the old folder or the new one (at worst a `.old-NAME` to clean); a link
    at `final` is replaced, never followed."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".old-{final.name}")
    if final.is_symlink():
        final.unlink()
    elif final.exists():
        remove(old)
        os.replace(final, old)
    os.replace(tmp, final)
    remove(old)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A fresh folder `.tmp-NAME` beside `path` to fill; it replaces `path` when the block ends without error."""
    path = Path(path)
    tmp = fresh_dir(path.with_name(f".tmp-{path.name}"))
    try:
        yield tmp
        swap_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
