"""DeepSpeed's universal checkpoint conversion (engine/backends/universal.py): a failure is one line and
leaves nothing behind. Resumes on another number of ranks: tests/integration/test_zero_universal.py."""

from __future__ import annotations

import pytest

from msa_dist.common.errors import MsaDistError
from msa_dist.engine.backends.universal import convert_to_universal


def test_a_failed_conversion_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    step = tmp_path / "step-0000004"
    (step / "deepspeed").mkdir(parents=True)
    (step / "deepspeed" / "mp_rank_00_model_states.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MsaDistError) as failed:
        convert_to_universal(step, "deepspeed")
    assert "\n" not in str(failed.value) and "universal checkpoint conversion" in str(failed.value)
    assert sorted(p.name for p in step.iterdir()) == ["deepspeed"]
