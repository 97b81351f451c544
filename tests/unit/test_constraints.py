"""constraints.txt (the tested set, README "Installing exactly the tested set") against pyproject.toml:
every dependency's pin satisfies its declared bounds, and the pins are this environment's versions."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML itself")
ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version.strip()
    return out


def test_every_declared_dependency_is_pinned_within_its_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [
        r for extra in ("test", "pretrained", "mlflow", "search") for r in project["optional-dependencies"][extra]
    ]
    pinned = pins()
    for raw in declared:
        req = Requirement(raw)
        if canonicalize_name(req.name) == "msa-dist":
            continue
        version = pinned.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is not in constraints.txt: python .ci/freeze_constraints.py"
        assert req.specifier.contains(version, prereleases=True), f"constraints.txt pins {req.name}=={version}: {raw}"


def test_the_pins_are_the_installed_versions():
    stale = {}
    for name, version in pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            stale[name] = (version, installed)
    assert not stale, f"constraints.txt differs from this environment (pinned, installed): {stale}"
