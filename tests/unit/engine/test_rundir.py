"""Run dirs (issue 23, items 6, 10 and 12): no silent overwrite of a finished run, a torn or missing
`latest` falls back with a warning (or says why in one line), a full disk or a read-only run dir is
one line, and metrics.jsonl is strict JSON."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil

import pytest
import torch
import yaml
from run_utils import finished_tiny_run, tiny_config

from msa_dist.cli import main
from msa_dist.engine.run import rundir
from msa_dist.engine.trainer import MetricsLog, train
from msa_dist.models.tokenizer import load_pretrained_tokenizer


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """(shards, config YAML, run dir) of a finished 2-epoch tiny run: checkpoints step-3 and step-6."""
    return finished_tiny_run(tmp_path_factory.mktemp("rundir"))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("msa-dist: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _records(run, kind=None) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if kind is None or r["type"] == kind]


def test_a_new_run_into_a_finished_run_dir_is_refused_unless_overwrite(finished_run, tmp_path, capsys):
    _, config, source = finished_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert main(["train", "--config", str(config), "--run-dir", str(run)]) == 2
    assert "already holds a run's checkpoints" in _one_line_error(capsys)
    assert main(["train", "--config", str(config), "--run-dir", str(run), "--resume", "auto", "--overwrite"]) == 2
    assert "give one of them" in _one_line_error(capsys)
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # nothing touched
    # --overwrite: a clean new run, with the tokenizer its own config asks for
    assert (
        main(
            [
                "train",
                "--config",
                str(config),
                "--run-dir",
                str(run),
                "--overwrite",
                "train.epochs=1",
                "model.text.tiny_vocab_size=60",
            ]
        )
        == 0
    )
    assert [r["step"] for r in _records(run, "train")] == [1, 2, 3]
    assert not _records(run, "resume")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "latest", "step-0000003"]
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["text"]["tiny_vocab_size"] == 60
    vocab_sizes = [len(load_pretrained_tokenizer(str(r / "tokenizer"))) for r in (run, source)]
    assert vocab_sizes[0] < vocab_sizes[1]
    assert not json.loads((run / "run_info.json").read_text()).get("resumed")


def test_a_torn_latest_falls_back_to_the_checkpoint_before_with_a_warning(finished_run, tmp_path, caplog):
    shards, _, source = finished_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    state = run / "checkpoints" / "step-0000006" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # a copy cut short
    summary = train(tiny_config(shards), run, resume="auto")
    assert "step-0000006/state.pt is truncated or not a torch file" in caplog.text
    assert "using step-0000003 instead" in caplog.text
    assert summary["status"] == "finished" and summary["step"] == 6
    assert [r["from"] for r in _records(run, "resume")] == ["step-0000003"]


def test_latest_naming_a_deleted_directory_says_so(finished_run, tmp_path, capsys, caplog):
    shards, config, source = finished_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    shutil.rmtree(run / "checkpoints" / "step-0000006")
    train(tiny_config(shards), run, resume="auto")
    assert "names step-0000006, which is gone or incomplete: using step-0000003 instead" in caplog.text
    assert [r["from"] for r in _records(run, "resume")] == ["step-0000003"]
    for step in ("step-0000003", "step-0000006"):  # now `latest` names a directory that is gone, and none is left
        shutil.rmtree(run / "checkpoints" / step)
    (run / "checkpoints" / "latest").write_text("step-0000006")
    lines = len(_records(run))
    assert main(["train", "--config", str(config), "--run-dir", str(run), "--resume", "auto"]) == 2
    assert "no usable checkpoint in" in _one_line_error(capsys) and len(_records(run)) == lines


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(
    finished_run, tmp_path, capsys, monkeypatch
):
    _, config, _ = finished_run
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if "step-0000006" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--run-dir", str(run)]) == 2
    err = _one_line_error(capsys)
    assert "cannot save the checkpoint of step 6" in err and "No space left on device" in err
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-0000003"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best", "latest", "step-0000003"]  # no half-written dir


def test_a_read_only_run_dir_is_one_line(finished_run, tmp_path, capsys, monkeypatch):
    _, config, _ = finished_run
    run = tmp_path / "read-only"
    run.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: the file system says no instead
        real_open = os.open

        def refuse(path, *args, **kwargs):
            if str(path).startswith(str(run)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(rundir.os, "open", refuse)
    else:
        run.chmod(0o555)
    assert main(["train", "--config", str(config), "--run-dir", str(run)]) == 2
    assert f"cannot write to the run dir {run}" in _one_line_error(capsys)


def test_metrics_jsonl_never_holds_nan_or_infinity(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", True, 0)
    log.write({"type": "train", "step": 1, "loss": math.nan, "grad_norm": math.inf, "x": [1.5, -math.inf]})
    log.close()
    text = (tmp_path / "metrics.jsonl").read_text()

    def no_constants(name):
        raise AssertionError(f"{name} in metrics.jsonl")

    record = json.loads(text, parse_constant=no_constants)
    assert record == {"type": "train", "step": 1, "loss": None, "grad_norm": None, "x": [1.5, None]}
