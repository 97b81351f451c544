"""Files and folders that appear whole or not at all: write beside, then `os.replace`.

One temp-name scheme for every site (`.NAME.PID.tmp`, hidden, unique per process). The temp file
is created with O_EXCL and O_NOFOLLOW after removing whatever had its name, so a symlink planted
at the temp path in a run dir from elsewhere is never followed out of it; `os.replace` itself
replaces a link at the final path rather than writing through it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def temp_path(path: str | Path) -> Path:
    """The temp name beside `path` that this process writes before replacing `path`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO]:
    """A file object on the temp path; `path` is replaced by it when the block ends without error."""
    path, tmp = Path(path), temp_path(path)
    with contextlib.suppress(FileNotFoundError):
        _remove(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, **({} if binary else {"encoding": encoding, "newline": newline})) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns `path`."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns `path`."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def fresh_dir(path: str | Path) -> Path:
    """An empty directory at `path` (whatever was there, a link included, is removed first)."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        _remove(path)
    path.mkdir(parents=True)
    return path


def swap_dir(tmp: str | Path, final: str | Path) -> None:
    """Put the finished folder `tmp` at `final`; an older `final` is moved aside first and then removed,
    so a crash leaves either the old folder or the new one (and at worst a `.old-NAME` to clean)."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".old-{final.name}")
    if final.is_symlink():
        final.unlink()
    elif final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
