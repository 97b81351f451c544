"""The README stays true to the code: quickstart commands, and every config key documented."""
from __future__ import annotations

from pathlib import Path

import pytest

from msa_dist.config import describe_fields

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_quickstart_has_the_two_commands():
    assert "pip install -e . && msa-dist demo" in README
    assert 'pip install -e ".[test]" && pytest -q' in README


@pytest.mark.parametrize("key", [k for k, _, _ in describe_fields()])
def test_every_config_key_is_in_the_reference(key):
    assert f"`{key}`" in README, f"README's config reference lacks {key}: regenerate it with `msa-dist config reference`"


def test_every_field_has_a_one_line_doc():
    assert [k for k, _, doc in describe_fields() if not doc] == []
