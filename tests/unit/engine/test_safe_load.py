"""Nothing loaded from a run dir, a checkpoint or init weights runs code (issue 23, item 1).

A checkpoint made by someone else may carry a pickle payload (`__reduce__` -> a call) in
`state.pt` or `rng-rank*.pt`, or a `latest` naming a directory outside `checkpoints/`: `train
--resume` refuses it in one line, and the payload never runs (its marker file never appears).
"""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from run_utils import finished_tiny_run
from msa_dist.cli import main
from msa_dist.engine.checkpoint import files as ckpt
from msa_dist.engine.checkpoint.checkpointer import resume_point
from msa_dist.engine.checkpoint.safe_load import UnreadableFile, UnsafeFile, load_tensors
from msa_dist.common.errors import MsaDistError


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


def test_a_deepspeed_checkpoint_from_outside_the_run_dir_needs_trust(finished_run, tmp_path):
    """DeepSpeed unpickles its own files: one from elsewhere is loaded only with --trust-checkpoint."""
    _, source = finished_run
    outside = tmp_path / "downloaded" / "step-0000006"
    shutil.copytree(source / "checkpoints" / "step-0000006", outside)
    (outside / "state.pt").unlink()
    (outside / "deepspeed").mkdir()
    ckpt_root = tmp_path / "run" / "checkpoints"
    ckpt_root.mkdir(parents=True)
    with pytest.raises(MsaDistError, match="--trust-checkpoint"):
        resume_point(ckpt_root, str(outside))
    assert resume_point(ckpt_root, str(outside), trust=True) == outside
    inside = ckpt_root / "step-0000006"
    shutil.copytree(outside, inside)
    assert resume_point(ckpt_root, str(inside)) == inside
    # a torch checkpoint from elsewhere holds nothing that could run: it needs no flag
    assert resume_point(ckpt_root, str(source / "checkpoints" / "step-0000006")) is not None


def test_checkpoint_names_of_evaluate_and_predict_stay_inside_the_run(finished_run, tmp_path):
    _, source = finished_run
    assert ckpt.model_weights_path(source, "step-0000003") == source / "checkpoints" / "step-0000003" / "model.pt"
    for name in ("../../elsewhere", "/etc", "best/../../x"):
        with pytest.raises(MsaDistError, match="use best, latest or a step-NNNNNNN"):
            ckpt.model_weights_path(source, name)
