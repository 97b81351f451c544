"""A search space in YAML (`msa-dist search --space FILE`): one dotted config key per entry.

```yaml
optim.lr: {low: 1.0e-5, high: 1.0e-3, log: true}   # a float (log scale)
model.head.layers: {low: 1, high: 3}                # an int: both bounds are ints
model.head.dropout: {low: 0.0, high: 0.5, step: 0.1}
model.head.fusion: {choices: [concat, gated]}       # one of these values
```

Each key is checked against the schema (a value set in place and validated) before any trial runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import Config, set_dotted, validate

RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class Dimension:
    """One searched key: a range (`low`..`high`, int when both are ints) or a list of `choices`."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        """The value an Optuna trial proposes for this key."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def samples(self) -> list:
        """Both ends (or every choice): the values the schema check tries."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def _dimension(key: str, spec: Any) -> Dimension:
    where = f"search space {key}"
    if not isinstance(spec, dict):
        raise MsaDistError(f"{where}: give {{low: A, high: B}} or {{choices: [...]}}, not {spec!r}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise MsaDistError(f"{where}: choices must be a non-empty list, and alone")
        return Dimension(key, choices=tuple(choices))
    unknown = set(spec) - RANGE_KEYS
    if unknown or not {"low", "high"} <= set(spec):
        raise MsaDistError(f"{where}: a range has low and high (and optionally log, step); got {sorted(spec)}")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
        raise MsaDistError(f"{where}: low and high must be numbers with low < high; got {low!r}, {high!r}")
    if spec.get("log") and low <= 0:
        raise MsaDistError(f"{where}: a log range needs low > 0; got {low!r}")
    return Dimension(key, low, high, bool(spec.get("log", False)), spec.get("step"))


def load_space(path: str | Path, cfg: Config) -> list[Dimension]:
    """The space in `path`, each key checked against `cfg`'s schema at its ends (or every choice)."""
    path = Path(path)
    if not path.is_file():
        raise MsaDistError(f"search space file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise MsaDistError(f"search space {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not raw:
        raise MsaDistError(f"search space {path} must map dotted config keys to ranges or choices")
    space = [_dimension(str(key), spec) for key, spec in raw.items()]
    for dim in space:
        for value in dim.samples():
            apply_params(cfg, {dim.key: value})
    return space


def apply_params(cfg: Config, params: dict) -> Config:
    """A copy of `cfg` with the dotted `params` set and validated (MsaDistError names a bad key or value)."""
    out = copy.deepcopy(cfg)
    for key, value in params.items():
        set_dotted(out, key, value)
    return validate(out)
