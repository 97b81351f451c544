"""Reading torch files from run dirs and checkpoints without running code.

Every `torch.load` of msa-dist goes through `load_tensors`: `weights_only=True`, so a file may hold
tensors, numbers, strings, lists, tuples and dicts, and nothing that pickle would call. A file that
asks for anything else (a `__reduce__` payload, a class of someone else's) is refused in one line
(`UnsafeFile`); a truncated or foreign file is `UnreadableFile`, which a resume from `latest`
answers by falling back to an older checkpoint. See docs/security.md.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from msa_dist.common.errors import MsaDistError


class UnreadableFile(MsaDistError):
    """Truncated, empty, or not a torch file: an older checkpoint may still be good."""


class UnsafeFile(MsaDistError):
    """Holds pickled objects besides tensors and plain data: never loaded."""


def load_tensors(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)`, its failures as one-line `MsaDistError`s.

    `mmap=True` maps the tensors instead of reading them (a cheap check of a whole checkpoint);
    only torch's zip format can be mapped, so other files are read whole to say what they are.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFile(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle's protocol: the error below says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        if refused:
            raise UnsafeFile(
                f"{path} holds pickled objects besides tensors and plain data ({refused}): msa-dist "
                "loads no code from a file, so it is not read (made elsewhere, or tampered with?)"
            ) from None
        raise UnreadableFile(
            f"{path} is not a torch file that loads without running code ({_unpickler_reason(str(exc))})"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, zipfile.BadZipFile) as exc:
        raise UnreadableFile(f"{path} is truncated or not a torch file ({_first_line(exc)})") from None
    except OSError as exc:
        raise UnreadableFile(f"cannot read {path}: {exc.strerror or exc}") from None


def _refused_global(message: str) -> str:
    """The line of torch's weights-only error that names what it refused ('' if none does)."""
    for line in message.splitlines():
        if "global" in line.lower() and ("unsupported" in line.lower() or "blocked" in line.lower()):
            return line.strip().rstrip(".")
    return ""


def _unpickler_reason(message: str) -> str:
    """What torch's restricted unpickler tripped on (never its advice to turn the restriction off)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1][:160]
    return "an object it does not accept"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
