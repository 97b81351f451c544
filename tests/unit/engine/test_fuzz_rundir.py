"""Fuzzing the readers of run dirs and exported folders (issue 29): the files of a finished tiny run
(config.yaml, run_info.json, metrics.jsonl, checkpoints/latest, checkpoints/best/metrics.json,
logit_offsets.json) and of its export (config.yaml) are mutated (bytes flipped, truncated, JSON values
replaced, a link in place of the file, a folder in place of it), then load_model, evaluate, export's
readers and `train --resume auto` run on it: each ends normally or in one line (MsaDistError), never
in another exception, and no link is followed out of the folder.

Derandomized (a fixed seed: the same examples every run), a few per target; `FUZZ_EXAMPLES=500` is
the long run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from fuzz_bounds import bounded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from run_utils import finished_tiny_run, tiny_config

from msa_dist.common.errors import MsaDistError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
FUZZ = settings(
    max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
RUN_FILES = [
    "config.yaml",
    "run_info.json",
    "metrics.jsonl",
    "checkpoints/latest",
    "checkpoints/best/metrics.json",
    "logit_offsets.json",
]
SECRET = "SECRET-OUTSIDE-THE-RUN"
JSON_VALUES = st.sampled_from([None, True, -1, 0, 1e308, float("nan"), "x", [], {}, [1, 2], {"a": {}}, 2**70])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(shards, run dir, exported folder), with logit offsets saved: made once, copied per example."""
    import torch

    from msa_dist.inference.calibration import save_offsets
    from msa_dist.inference.export import export_run

    root = tmp_path_factory.mktemp("fuzz-run")
    shards, _, run = finished_tiny_run(root)
    save_offsets(run, torch.zeros(3), {"split": "val"})
    export_run(run, root / "export")
    (root / "secret.json").write_text(json.dumps({"offsets": SECRET, "type": "eval", "data": {}, "model": {}}))
    return shards, run, root / "export"


def _mutate(path: Path, kind: str, data, secret: Path) -> None:
    """Change the file at `path` (which may be missing) in place."""
    raw = path.read_bytes() if path.is_file() else b"{}"
    if kind == "link-out":
        target = data.draw(st.sampled_from([str(secret), "/dev/zero", "/etc/passwd", "../../..", "missing"]))
        _remove(path)
        path.symlink_to(target)
    elif kind == "folder":
        _remove(path)
        path.mkdir()
    elif kind == "truncate":
        path.write_bytes(raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)))])
    elif kind == "flip":
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        path.write_bytes(raw[:at] + bytes([data.draw(st.integers(0, 255))]) + raw[at + 1 :])
    else:  # a JSON / YAML value replaced, the document kept well formed
        path.write_text(json.dumps(_replace(_parse(raw), data)))


def _parse(raw: bytes):
    import yaml

    try:
        return yaml.safe_load(raw.decode("utf-8", "replace").splitlines()[-1] if raw.startswith(b'{"') else raw)
    except yaml.YAMLError:
        return {}


def _replace(value, data):
    """`value` with one leaf (or the whole) replaced by a drawn JSON value."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value, key=str)))
        return {**value, key: _replace(value[key], data)}
    if isinstance(value, list) and value and data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(value) - 1))
        return value[:at] + [_replace(value[at], data)] + value[at + 1 :]
    return data.draw(JSON_VALUES)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _one_line_or_done(call) -> None:
    with bounded():  # a memory bound (MemoryError, not the OOM killer) and a hang bound
        try:
            result = call()
        except MsaDistError as exc:
            assert "\n" not in str(exc) and SECRET not in str(exc), str(exc)
            return
    assert SECRET not in repr(result)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


KINDS = st.sampled_from(["link-out", "folder", "truncate", "flip", "value", "value"])


@FUZZ
@given(data=st.data(), name=st.sampled_from(RUN_FILES), kind=KINDS)
def test_fuzzed_run_dirs_load_evaluate_and_export_or_fail_in_one_line(finished, tmp_path_factory, data, name, kind):
    from msa_dist.engine.run.provenance import check_shards, read_run_info
    from msa_dist.inference.calibration import load_offsets
    from msa_dist.inference.evaluate import evaluate
    from msa_dist.inference.export import _val_metrics, export_run
    from msa_dist.inference.predictor import load_model

    shards, run, _ = finished
    work = tmp_path_factory.mktemp("fuzz")
    copy = _copy(run, work / "run")
    _mutate(copy / name, kind, data, run.parent / "secret.json")
    _one_line_or_done(lambda: load_model(copy, adjust=True))
    _one_line_or_done(lambda: read_run_info(copy))
    _one_line_or_done(lambda: load_offsets(copy))
    _one_line_or_done(lambda: check_shards(copy, shards, "val"))
    _one_line_or_done(lambda: _val_metrics(copy, copy / "checkpoints" / "best" / "model.pt"))
    if data.draw(st.booleans()):
        _one_line_or_done(lambda: evaluate(str(copy), str(shards), batch_size=8))
    else:
        _one_line_or_done(lambda: export_run(copy, work / "out"))
        if (work / "out" / "README.md").is_file():
            assert SECRET not in (work / "out" / "README.md").read_text()


@FUZZ
@given(data=st.data(), kind=KINDS)
def test_fuzzed_exported_configs_load_or_fail_in_one_line(finished, tmp_path_factory, data, kind):
    from msa_dist.inference.predictor import load_model

    _, _, export = finished
    copy = _copy(export, tmp_path_factory.mktemp("fuzz") / "export")
    _mutate(copy / "config.yaml", kind, data, export.parent / "secret.json")
    _one_line_or_done(lambda: load_model(copy, adjust=True))


@settings(max_examples=3, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), name=st.sampled_from(["run_info.json", "metrics.jsonl", "checkpoints/latest"]), kind=KINDS)
def test_fuzzed_run_dirs_resume_or_fail_in_one_line(finished, tmp_path_factory, data, name, kind):
    from msa_dist.engine.trainer import train

    shards, run, _ = finished
    copy = _copy(run, tmp_path_factory.mktemp("fuzz") / "run")
    _mutate(copy / name, kind, data, run.parent / "secret.json")
    _one_line_or_done(
        lambda: train(tiny_config(shards, "train.epochs=3", "train.max_steps_per_epoch=1"), copy, resume="auto")
    )


def test_an_exported_config_asking_for_a_huge_model_is_one_line_before_allocating(finished, tmp_path):
    import yaml

    from msa_dist.inference.predictor import load_model

    _, _, export = finished
    copy = _copy(export, tmp_path / "export")
    card = yaml.safe_load((copy / "config.yaml").read_text())
    # 8 x 1024 wide: ~400 MB (the old code allocated it, then failed on the weights); the 16,384 x 64
    # (800 GB) now fails the config's bounds first
    card["model"]["text"].update(tiny_hidden=1024, tiny_layers=8, tiny_heads=8)
    (copy / "config.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(MsaDistError) as err:
        load_model(copy)
    assert "\n" not in str(err.value) and "describes a model of" in str(err.value)
    card["model"]["text"].update(tiny_hidden=16384, tiny_layers=64)
    (copy / "config.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(MsaDistError) as err:
        load_model(copy)
    assert "\n" not in str(err.value) and "tiny_hidden" in str(err.value)
