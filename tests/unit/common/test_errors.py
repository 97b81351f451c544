"""Errors (common/errors.py): one a loader worker raised is still one line for the CLI."""

from __future__ import annotations

import pytest
from torch.utils.data._utils import ExceptionWrapper

from msa_dist.common.errors import MsaDistError, user_message


def test_an_error_raised_in_a_loader_worker_is_still_one_line():
    """torch re-raises a worker's exception with the worker's traceback in its message (ExceptionWrapper,
    as the DataLoader does); the CLI prints the original line."""
    try:
        raise MsaDistError("shard x is gone")
    except MsaDistError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(MsaDistError) as raised:
        wrapped.reraise()
    assert "\n" in str(raised.value) and user_message(raised.value) == "shard x is gone"
