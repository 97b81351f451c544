"""The tests mirror the package: a test file under tests/unit/<part>/ names a part that exists in msa_dist/."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "tests" / "unit"


def test_every_unit_test_folder_is_a_part_of_the_package():
    parts = {path.parent.name for path in (ROOT / "msa_dist").glob("*/__init__.py")}
    assert {"data", "engine", "models"} <= parts  # the parts are seen, so a stray folder would fail
    files = [path.relative_to(UNIT) for path in UNIT.rglob("test_*.py") if path.parent != UNIT]
    assert files
    strays = [str(path) for path in files if path.parts[0] not in parts]
    assert strays == [], f"not under a part of msa_dist/: {strays}"
