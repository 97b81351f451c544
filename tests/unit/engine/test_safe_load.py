"""Nothing loaded from a run dir, a checkpoint or init weights runs code (issue 23, item 1; issue 29).

A checkpoint made by someone else may carry a pickle payload (`__reduce__` -> a call) in
`state.pt` or `rng-rank*.pt`, or a `latest` naming a directory outside `checkpoints/`: `train
--resume` refuses it in one line, and the payload never runs (its marker file never appears).
DeepSpeed unpickles its own files, so it reads a checkpoint only if this user saved it (its
trust.json verifies) or with --trust-checkpoint, however the resume found it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
from dist_utils import run as dist_run
from run_utils import finished_tiny_run

from msa_dist.cli import main
from msa_dist.common.errors import MsaDistError
from msa_dist.engine.backends.universal import convert_to_universal
from msa_dist.engine.checkpoint import files as ckpt
from msa_dist.engine.checkpoint import trust as checkpoint_trust
from msa_dist.engine.checkpoint.checkpointer import resume_point
from msa_dist.engine.checkpoint.safe_load import UnreadableFile, UnsafeFile, load_tensors


class Payload:
    """Unpickling this creates `marker`: what an attacker's checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """(config YAML, run dir) of a finished 2-epoch tiny run: checkpoints step-3 and step-6."""
    _, config, run = finished_tiny_run(tmp_path_factory.mktemp("secure"))
    assert (run / "checkpoints" / "latest").read_text() == "step-0000006"
    return config, run


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("msa-dist: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_resume_of_a_payload_checkpoint_runs_nothing_and_says_why(finished_run, tmp_path, capsys):
    config, source = finished_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    marker = tmp_path / "pwned"
    step = run / "checkpoints" / "step-0000006"
    for name in ("state.pt", "rng-rank0.pt"):
        torch.save({"optimizer": Payload(marker)}, step / name)
    for resume in (str(step), "auto"):
        assert main(["train", "--config", str(config), "--run-dir", str(run), "--resume", resume]) == 2
        assert "holds pickled objects besides tensors and plain data" in _one_line_error(capsys)
    # a pickle that is not torch's zip format is not read either
    with open(step / "rng-rank0.pt", "wb") as handle:
        pickle.dump({"python": Payload(marker)}, handle)
    (step / "state.pt").write_bytes((run / "checkpoints" / "step-0000003" / "state.pt").read_bytes())
    assert main(["train", "--config", str(config), "--run-dir", str(run), "--resume", str(step)]) == 2
    err = _one_line_error(capsys)
    assert "rng-rank0.pt is not a torch file that loads without running code" in err and "weights_only" not in err
    # and a `latest` that leads out of checkpoints/ is not followed
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(step, elsewhere / "step-0000006")
    for target in ("../../elsewhere/step-0000006", str(elsewhere / "step-0000006")):
        (run / "checkpoints" / "latest").write_text(target)
        assert main(["train", "--config", str(config), "--run-dir", str(run), "--resume", "auto"]) == 2
        assert "not a step-NNNNNNN directory inside" in _one_line_error(capsys)
    assert not marker.exists()


def test_a_step_directory_linked_out_of_checkpoints_is_not_a_checkpoint(finished_run, tmp_path):
    _, source = finished_run
    root = tmp_path / "checkpoints"
    root.mkdir()
    shutil.copytree(source / "checkpoints" / "step-0000003", root / "step-0000003")
    outside = tmp_path / "outside" / "step-0000009"
    shutil.copytree(source / "checkpoints" / "step-0000006", outside)
    (root / "step-0000009").symlink_to(outside)
    assert ckpt.latest_checkpoint(root) == root / "step-0000003"


def test_load_tensors_refuses_payloads_and_names_torn_files(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"x": Payload(marker)}, tmp_path / "payload.pt")
    with pytest.raises(UnsafeFile, match="posix.system"):
        load_tensors(tmp_path / "payload.pt")
    with pytest.raises(UnsafeFile):
        load_tensors(tmp_path / "payload.pt", mmap=True)
    good = {"w": torch.ones(3), "python": (3, tuple(range(5)), None), "lr": [1e-3], "name": "x"}
    torch.save(good, tmp_path / "good.pt")
    assert load_tensors(tmp_path / "good.pt", mmap=True)["python"] == good["python"]
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "torn.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("torn.pt", "empty.pt"):
        for mmap in (False, True):
            with pytest.raises(UnreadableFile):
                load_tensors(tmp_path / name, mmap=mmap)
    assert not marker.exists()


def test_init_from_a_pickle_says_no_without_advising_weights_only_false(finished_run, tmp_path):
    _, source = finished_run
    marker = tmp_path / "pwned"
    weights = tmp_path / "weights.pt"
    torch.save({"encoder.weight": Payload(marker)}, weights)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(MsaDistError) as info:
        ckpt.load_init_weights(model, str(weights))
    message = str(info.value)
    assert "train.init_from" in message and "holds pickled objects" in message
    assert "weights_only" not in message and "\n" not in message
    torch.save([1, 2], weights)
    with pytest.raises(MsaDistError, match="not a state_dict"):
        ckpt.load_init_weights(model, str(weights))
    assert not marker.exists()


def _as_deepspeed_step(step: Path, payload) -> None:
    """Turn a step directory of a torch run into a DeepSpeed one whose model states carry `payload`."""
    (step / "state.pt").unlink()
    (step / "deepspeed").mkdir()
    torch.save({"module": payload}, step / "deepspeed" / "mp_rank_00_model_states.pt")
    client = json.loads((step / "client.json").read_text())
    client["layout"].update(backend="deepspeed", checkpoint_format="deepspeed")
    (step / "client.json").write_text(json.dumps(client))


def test_a_deepspeed_checkpoint_not_saved_here_needs_trust_wherever_it_lies(finished_run, tmp_path):
    """DeepSpeed unpickles its own files: it may read them only if this user saved them (an HMAC in
    trust.json under a key outside the run dir) or with --trust-checkpoint, inside the run dir or not."""
    _, source = finished_run
    outside = tmp_path / "downloaded" / "step-0000006"
    shutil.copytree(source / "checkpoints" / "step-0000006", outside)
    _as_deepspeed_step(outside, {"w": torch.ones(2)})
    ckpt_root = tmp_path / "run" / "checkpoints"
    inside = ckpt_root / "step-0000006"
    shutil.copytree(outside, inside)
    for step in (outside, inside):
        with pytest.raises(MsaDistError, match="was not saved by this user on this machine.*--trust-checkpoint"):
            resume_point(ckpt_root, str(step))
        assert resume_point(ckpt_root, str(step), trust=True) == step
    with pytest.raises(MsaDistError, match="--trust-checkpoint"):
        resume_point(ckpt_root, "auto")
    checkpoint_trust.sign(inside, "deepspeed")  # as a save of this run does
    assert resume_point(ckpt_root, str(inside)) == inside and resume_point(ckpt_root, "auto") == inside
    shutil.copytree(inside, outside.parent / "moved")  # a run dir made here may move
    assert checkpoint_trust.made_here(outside.parent / "moved", "deepspeed")
    # a torch checkpoint from elsewhere holds nothing that could run: it needs no flag
    assert resume_point(ckpt_root, str(source / "checkpoints" / "step-0000006")) is not None


def test_the_trust_record_fails_on_any_change_to_the_files_or_the_key(tmp_path, monkeypatch):
    folder = tmp_path / "step" / "deepspeed"
    (folder / "zero").mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"a" * 100)
    (folder / "zero" / "opt.pt").write_bytes(b"b" * 10)
    checkpoint_trust.sign(folder.parent, "deepspeed")
    key = checkpoint_trust.key_path()
    assert checkpoint_trust.made_here(folder.parent, "deepspeed") and key.stat().st_mode & 0o777 == 0o600
    (folder / "model.pt").write_bytes(b"a" * 99 + b"c")  # same size, another byte
    assert not checkpoint_trust.made_here(folder.parent, "deepspeed")
    checkpoint_trust.sign(folder.parent, "deepspeed")
    (folder / "extra.pt").write_bytes(b"")
    assert not checkpoint_trust.made_here(folder.parent, "deepspeed")
    (folder / "extra.pt").unlink()
    assert checkpoint_trust.made_here(folder.parent, "deepspeed")
    monkeypatch.setenv("MSA_DIST_CONFIG_DIR", str(tmp_path / "another-user"))
    assert not checkpoint_trust.made_here(folder.parent, "deepspeed")
    monkeypatch.setenv("MSA_DIST_CONFIG_DIR", str(key.parent))
    (folder / "link.pt").symlink_to(tmp_path / "elsewhere.pt")
    checkpoint_trust.sign(folder.parent, "deepspeed")  # a folder with a link is never vouched for
    assert not checkpoint_trust.made_here(folder.parent, "deepspeed")


@pytest.mark.slow
def test_resume_auto_of_a_downloaded_deepspeed_run_unpickles_nothing(finished_run, tmp_path):
    """issue 29: `--resume auto`, a torchrun restart (auto implied) and a step dir inside the run
    each refuse in one line; before, the payload ran and the run ended in a TypeError traceback."""
    config, source = finished_run
    run_dir = tmp_path / "downloaded"
    shutil.copytree(source, run_dir)
    marker = tmp_path / "pwned"
    for step in run_dir.glob("checkpoints/step-*"):
        _as_deepspeed_step(step, Payload(marker))
    train = [
        sys.executable,
        "-m",
        "msa_dist",
        "train",
        "--config",
        str(config),
        "--run-dir",
        str(run_dir),
        "backend.name=deepspeed",
    ]
    for extra, env in (
        ([], {"TORCHELASTIC_RESTART_COUNT": "1"}),
        (["--resume", "auto"], {}),
        (["--resume", str(run_dir / "checkpoints" / "step-0000006")], {}),
    ):
        done = dist_run(train + extra, timeout=120, **env)
        err = done.stderr.strip()
        assert done.returncode == 2 and "Traceback" not in err, err
        assert err.splitlines()[-1].startswith("msa-dist: error: --resume ") and "--trust-checkpoint" in err, err
    assert not marker.exists()


def test_a_planted_universal_copy_is_converted_afresh_not_loaded(tmp_path, monkeypatch):
    """The converted copy of a step dir is reused only if this user made it (universal/trust.json)."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    step = tmp_path / "step-0000004"
    (step / "deepspeed").mkdir(parents=True)
    (step / "deepspeed" / "mp_rank_00_model_states.pt").write_bytes(b"not a checkpoint")
    planted = step / "universal" / "deepspeed" / "zero" / "optimizer_state.pt"
    planted.parent.mkdir(parents=True)
    torch.save({"x": Payload(tmp_path / "pwned")}, planted)
    with pytest.raises(MsaDistError, match="universal checkpoint conversion"):
        convert_to_universal(step, "deepspeed")  # tried afresh (and fails on this fake input)
    assert not planted.exists() and not (tmp_path / "pwned").exists()
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"made here")
    checkpoint_trust.sign(step / "universal", "deepspeed")
    assert convert_to_universal(step, "deepspeed") == step / "universal" and planted.read_bytes() == b"made here"


def test_checkpoint_names_of_evaluate_and_predict_stay_inside_the_run(finished_run, tmp_path):
    _, source = finished_run
    assert ckpt.model_weights_path(source, "step-0000003") == source / "checkpoints" / "step-0000003" / "model.pt"
    for name in ("../../elsewhere", "/etc", "best/../../x"):
        with pytest.raises(MsaDistError, match="use best, latest or a step-NNNNNNN"):
            ckpt.model_weights_path(source, name)
