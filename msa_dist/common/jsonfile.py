"""Small JSON files of a run dir (run_info.json, metrics.json, metrics.jsonl, logit_offsets.json):
read as regular files of bounded size, never through a link; a broken one is one line naming it."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

from msa_dist.common.errors import MsaDistError

MAX_RUN_JSON_BYTES = 64 << 20  # a metrics.jsonl of a long run with an eval record per epoch is a few MB


def read_run_bytes(path: str | Path, limit: int = MAX_RUN_JSON_BYTES) -> bytes:
    """The bytes of a regular file (not a link, a FIFO or a device) of at most `limit` bytes; OSError else."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{info.st_size} bytes, more than the {limit} allowed")
        data = os.read(fd, limit + 1)
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise OSError(errno.EFBIG, f"more than the {limit} bytes allowed")
        return data
    finally:
        os.close(fd)


def file_error(exc: Exception) -> str:
    """A short reason for an error reading or parsing a small file."""
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "a symbolic link"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


def read_json_object(path: str | Path) -> dict:
    """A file holding one JSON object; MsaDistError naming the file if it is unreadable or not an object."""
    try:
        value = json.loads(read_run_bytes(path))
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        raise MsaDistError(f"{path} is not readable JSON ({file_error(exc)}): fix or delete it") from None
    if not isinstance(value, dict):
        raise MsaDistError(f"{path} holds {type(value).__name__}, not a JSON object: fix or delete it")
    return value


def read_json_records(path: str | Path) -> tuple[list[dict], int]:
    """The JSON objects of a JSON-lines file and the count of lines skipped as broken; MsaDistError
    naming the file if it cannot be read at all."""
    try:
        text = read_run_bytes(path).decode("utf-8", errors="replace")
    except OSError as exc:
        raise MsaDistError(f"{path} is not readable ({file_error(exc)})") from None
    records, broken = [], 0
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif line.strip():
            broken += 1
    return records, broken
