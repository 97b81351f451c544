"""The README stays true to the code: quickstart commands, and every config key documented (README + docs/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from msa_dist.config.reference import describe_fields

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# the README links docs/*.md for the long parts (the config reference is docs/configuration.md)
DOCS = README + "".join(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))


def test_quickstart_has_the_two_commands():
    assert "pip install -e . && msa-dist demo" in README
    assert 'pip install -e ".[test]" && pytest -q' in README


@pytest.mark.parametrize("key", [k for k, _, _ in describe_fields()])
def test_every_config_key_is_in_the_reference(key):
    assert f"`{key}`" in DOCS, (
        f"the config reference (docs/configuration.md) lacks {key}: regenerate it with `msa-dist config reference`"
    )


def test_every_field_has_a_one_line_doc():
    assert [k for k, _, doc in describe_fields() if not doc] == []
