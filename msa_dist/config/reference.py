"""The config reference: every key with its default and the one-line comment beside it in the section dataclasses
(`msa-dist config reference`, docs/configuration.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

from msa_dist.config.schema import Config
from msa_dist.config.values import field_types


def describe_fields(cls=Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, one-line doc) for every leaf field: the config reference."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe_fields(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((prefix + f.name, default, _field_docs(cls).get(f.name, "")))
    return rows


def _field_docs(cls) -> dict[str, str]:
    """The trailing `# comment` of each field in the class source."""
    import ast
    import inspect

    lines, _ = inspect.getsourcelines(cls)
    docs = {}
    for node in ast.parse("".join(lines)).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            text = lines[node.lineno - 1]
            docs[node.target.id] = text.split("#", 1)[1].strip() if "#" in text else _comment_above(lines, node.lineno)
    return docs


def _comment_above(lines: list[str], lineno: int) -> str:
    """The `# ...` lines right above line `lineno` (1-based), joined: a field's comment too long to trail it."""
    above = []
    for text in reversed(lines[: lineno - 1]):
        if not text.strip().startswith("#"):
            break
        above.insert(0, text.strip()[1:].strip())
    return " ".join(above)
