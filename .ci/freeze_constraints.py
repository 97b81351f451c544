"""Write constraints.txt: the installed version of every package in the dependency closure of
msa-dist[test] (its extras included), so `pip install -c constraints.txt -e ".[test]"` installs
exactly the set this environment passed the suite with.

Run it in the environment CI passed in: `python .ci/freeze_constraints.py > constraints.txt`.
Python 3.11+ (tomllib). It reads pyproject.toml and the installed packages' metadata (importlib.metadata); markers are
evaluated for this interpreter and platform.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def project_requirements(extras: set[str]) -> list[Requirement]:
    """The project's own requirements with `extras` (and the extras those name, e.g. msa-dist[pretrained])."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    reqs, seen, todo = [Requirement(r) for r in project["dependencies"]], set(), list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for raw in optional.get(extra, []):
            req = Requirement(raw)
            if canonicalize_name(req.name) == name:
                todo.extend(req.extras)
            else:
                reqs.append(req)
    return reqs


def closure(roots: list[Requirement]) -> dict[str, str]:
    """name -> installed version for every package the roots need, transitively."""
    pinned: dict[str, str] = {}
    todo = [(req, frozenset(req.extras)) for req in roots]
    done: set[tuple[str, frozenset]] = set()
    while todo:
        req, extras = todo.pop()
        key = (canonicalize_name(req.name), extras)
        if key in done:
            continue
        done.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{req.name} is required but not installed: install the project's [test] extra first")
        pinned[canonicalize_name(dist.metadata["Name"])] = dist.version
        for raw in dist.requires or []:
            sub = Requirement(raw)
            wanted = [{"extra": e} for e in extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in wanted):
                todo.append((sub, frozenset(sub.extras)))
    return pinned


def main() -> None:
    pinned = closure([r for r in project_requirements({"test"}) if r.marker is None or r.marker.evaluate()])
    print("# The exact set `.ci/run` passed with (python .ci/freeze_constraints.py > constraints.txt);")
    where = f"Python {sys.version.split()[0]} on {sys.platform}"
    print(f"# {where}. Install with: pip install -c constraints.txt -e '.[test]'")
    for name in sorted(pinned):
        print(f"{name}=={pinned[name]}")


if __name__ == "__main__":
    main()
