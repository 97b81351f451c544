"""Config values from YAML and the command line: typed into the schema's fields, or one-line errors
naming the dotted key (schema.py's loader uses these; checks.py checks the values)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

import yaml

from msa_dist.common.errors import MsaDistError


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return coerce(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise MsaDistError(f"config key '{key}' expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise MsaDistError(f"config key '{key}' expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise MsaDistError(f"config key '{key}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise MsaDistError(f"config key '{key}' expects a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise MsaDistError(f"config key '{key}' expects a number, got {_short(value)}") from None
        if not math.isfinite(number):  # 1e999 reads as inf: no lr, rate or size is meant to be
            raise MsaDistError(f"config key '{key}' expects a finite number, got {_short(value)}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise MsaDistError(f"config key '{key}' expects a string, got {value!r}")
        return "" if value is None else str(value)
    if tp is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise MsaDistError(f"config key '{key}' expects a list, got {value!r}")
        return tuple(coerce(v, float, key) for v in value)
    if origin is list:  # list[str]: a YAML list, or "a,b" on the command line
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("()[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise MsaDistError(f"config key '{key}' expects a list, got {value!r}")
        return [coerce(v, typing.get_args(tp)[0], key) for v in value]
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def typed_values(cls, values: Any, prefix: str = "") -> dict:
    """A nested dict from YAML or the command line, checked against the dataclass `cls`: known keys,
    each value converted to its field's type (sections stay nested dicts)."""
    if not isinstance(values, dict):
        raise MsaDistError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {values!r}")
    types_ = field_types(cls)
    typed = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in types_:
            raise MsaDistError(f"unknown config key '{key}'")
        tp = types_[name]
        typed[name] = typed_values(tp, value, key + ".") if dataclasses.is_dataclass(tp) else coerce(value, tp, key)
    return typed


def deep_merge(base: dict, override: dict) -> dict:
    """`base` with `override`'s keys on top, nested dicts merged key by key (neither is changed)."""
    out = dict(base)
    for key, value in override.items():
        old = out.get(key)
        out[key] = deep_merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def merge(layers: list[dict]) -> dict:
    """Typed layers merged key by key, a later layer winning."""
    merged: dict = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    return merged


def build(cls, typed: dict) -> Any:
    """The dataclass tree from typed values, built once: each section's `__post_init__` sees final values."""
    types_ = field_types(cls)
    return cls(
        **{
            name: build(types_[name], value) if dataclasses.is_dataclass(types_[name]) else value
            for name, value in typed.items()
        }
    )


def apply_values(obj: Any, values: dict, prefix: str = "") -> None:
    """Write a nested dict into a dataclass tree in place, checking keys and types (not values)."""
    for name, value in typed_values(type(obj), values, prefix).items():
        if dataclasses.is_dataclass(getattr(obj, name)):
            apply_values(getattr(obj, name), value, f"{prefix}{name}.")
        else:
            setattr(obj, name, value)


def nest(key: str, value: Any) -> dict:
    """'a.b.c', v -> {'a': {'b': {'c': v}}}."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """'key.sub=value' -> (key, the value read as YAML)."""
    if "=" not in text:
        raise MsaDistError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    return key.strip(), value
