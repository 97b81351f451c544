"""The one owner of the process group: `process_group_scope()` around a whole command.

A backend joins the group when a run needs it (`join_process_group`: once, idempotent) and never
leaves it: `ablate`, `sweep` and `cv` train several runs in one process, and a second
init_process_group on the same store would read the first one's stale keys. The scope, entered
once by the CLI around each command, destroys the group when the command ends, however it ends.
No barrier on the way out: after a failure on one rank the others would wait in it for the
whole `backend.timeout_s`.

This module imports no torch, so commands that never train start fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def process_group_scope() -> Iterator[None]:
    """Leave the process group (if anything inside joined one) when the block ends."""
    try:
        yield
    finally:
        if "torch.distributed" in sys.modules:  # only a command that trained can hold a group
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
