"""No write into a run dir follows a link planted there (issue 29).

A run dir from elsewhere may hold links at the names msa-dist writes (`.lock`, `checkpoints/latest.tmp`,
`report.md`, ...) pointing at a user's files outside it: `train` must leave those files as they were.
`.lock` and an append to `metrics.jsonl` refuse a link in one line; every other write goes through a
new temp file and `os.replace`, which replaces the link itself (msa_dist/common/atomic.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from run_utils import finished_tiny_run
from security_utils import no_hang

from msa_dist.cli import main
from msa_dist.common.atomic import atomic_open, temp_path, write_atomic
from msa_dist.common.errors import MsaDistError
from msa_dist.engine.run.rundir import RunDirLock
from msa_dist.engine.trainer import MetricsLog

PRECIOUS = "a file of the user's, outside the run dir\n"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """(config YAML, run dir) of a finished 2-epoch tiny run: checkpoints step-3 and step-6."""
    _, config, run = finished_tiny_run(tmp_path_factory.mktemp("planted"))
    return config, run


def _outside(tmp_path: Path) -> dict[str, Path]:
    """Files and a folder outside the run dir, and a name there that must not come to exist."""
    out = tmp_path / "outside"
    (out / "folder").mkdir(parents=True)
    (out / "folder" / "kept.txt").write_text(PRECIOUS)
    targets = {name: out / name for name in ("bashrc", "notes.md", "data.json", "image.png", "vocab.txt")}
    for path in targets.values():
        path.write_text(PRECIOUS)
    return {**targets, "folder": out / "folder", "absent": out / "absent"}


def _untouched(targets: dict[str, Path]) -> None:
    for name, path in targets.items():
        if name == "folder":
            assert sorted(p.name for p in path.iterdir()) == ["kept.txt"]
            assert (path / "kept.txt").read_text() == PRECIOUS
        elif name == "absent":
            assert not path.exists() and not path.is_symlink(), f"a write followed a link to {path}"
        else:
            assert path.read_text() == PRECIOUS, f"a write followed a link to {path}"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("msa-dist: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_a_link_planted_at_lock_is_refused_and_its_target_kept(finished_run, tmp_path, capsys):
    """Before: .lock was opened with O_CREAT, following the link, then truncated: the target held
    only `host=... pid=...`, on a resume, a fresh run (DDP too) and with --overwrite alike."""
    config, source = finished_run
    targets = _outside(tmp_path)
    downloaded, fresh = tmp_path / "downloaded", tmp_path / "fresh"
    shutil.copytree(source, downloaded)
    fresh.mkdir()
    for run_dir in (downloaded, fresh):
        (run_dir / ".lock").unlink(missing_ok=True)
        (run_dir / ".lock").symlink_to(targets["bashrc"])
    train = ["train", "--config", str(config), "--run-dir"]
    for args in (
        [str(downloaded), "--resume", "auto"],
        [str(downloaded), "--overwrite"],
        [str(fresh)],
        [str(fresh), "backend.name=ddp"],
    ):
        assert main(train + args) == 2
        assert ".lock is a symbolic link to" in _one_line_error(capsys)
    _untouched(targets)
    # a link to a name that does not exist yet is not created either; a FIFO does not block
    (fresh / ".lock").unlink()
    (fresh / ".lock").symlink_to(targets["absent"])
    with pytest.raises(MsaDistError, match="symbolic link"):
        RunDirLock(fresh).acquire()
    (fresh / ".lock").unlink()
    os.mkfifo(fresh / ".lock")
    with no_hang(30), pytest.raises(MsaDistError, match="a FIFO, not a lock file"):
        RunDirLock(fresh).acquire()
    _untouched(targets)


@pytest.mark.parametrize("kind", ["files", "folders"])
def test_a_resumed_run_writes_through_no_planted_link(finished_run, tmp_path, kind):
    """Links at the temp names of atomic writes, at report.md and the plots (before: each target was
    overwritten), or at the temp folders of a save (before: a FileExistsError traceback): the resumed
    run saves, publishes and reports, and every target stays as it was."""
    config, source = finished_run
    targets = _outside(tmp_path)
    run = tmp_path / "downloaded"
    shutil.copytree(source, run)
    (run / ".lock").unlink(missing_ok=True)
    ckpts = run / "checkpoints"
    planted = {
        ckpts / "latest.tmp": targets["bashrc"],
        run / "report.md": targets["notes.md"],
        run / "metrics.jsonl.tmp": targets["absent"],
        run / "run_info.json.tmp": targets["data.json"],
        run / "config.yaml": targets["data.json"],
        run / "curves.png": targets["image.png"],
        run / "confusion_matrix.png": targets["image.png"],
    }
    if kind == "folders":
        planted = {
            ckpts / ".tmp-step-0000009": targets["folder"],
            ckpts / ".tmp-best": targets["folder"],
            ckpts / ".old-best": targets["folder"],
            run / ".tmp-text_config": targets["folder"],
        }
    for link, target in planted.items():
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    assert main(["train", "--config", str(config), "--run-dir", str(run), "--resume", "auto", "train.epochs=3"]) == 0
    _untouched(targets)
    assert (ckpts / "latest").read_text() == "step-0000009" and (ckpts / "step-0000009" / "client.json").is_file()
    for name in ("report.md", "config.yaml", "curves.png", "run_info.json", "text_config"):
        assert (run / name).exists() and not (run / name).is_symlink()
    assert "resumed" in (run / "run_info.json").read_text()


def test_a_fresh_run_writes_through_no_planted_link(finished_run, tmp_path):
    """A new run into a folder holding links (files, and files inside its tokenizer/ and text_config/)."""
    config, _ = finished_run
    targets = _outside(tmp_path)
    run = tmp_path / "fresh"
    for sub in ("tokenizer", "text_config"):
        (run / sub).mkdir(parents=True)
    planted = {
        run / "config.yaml": targets["data.json"],
        run / "metrics.jsonl": targets["notes.md"],
        run / "report.md": targets["absent"],
        run / "tokenizer" / "tokenizer.json": targets["vocab.txt"],
        run / "text_config" / "config.json": targets["data.json"],
    }
    for link, target in planted.items():
        link.symlink_to(target)
    assert main(["train", "--config", str(config), "--run-dir", str(run), "train.epochs=1"]) == 0
    _untouched(targets)
    for name in ("tokenizer/tokenizer.json", "text_config/config.json", "report.md", "metrics.jsonl"):
        assert not (run / name).is_symlink() and (run / name).stat().st_size
    assert (run / "metrics.jsonl").read_text().count('"type": "train"') == 3


def test_appending_to_a_linked_metrics_log_is_one_line(tmp_path):
    targets = _outside(tmp_path)
    log = tmp_path / "metrics.jsonl"
    log.symlink_to(targets["notes.md"])
    with pytest.raises(MsaDistError, match="metrics.jsonl is a symbolic link to .*not written through"):
        MetricsLog(log, True, None)  # a checkpoint without log_lines: the log is only appended to
    MetricsLog(log, True, 0).close()  # rewritten: the link itself is replaced
    assert log.is_file() and not log.is_symlink() and log.read_text() == ""
    _untouched(targets)


def test_atomic_writes_never_follow_a_link_and_leave_no_temp_file(tmp_path):
    targets = _outside(tmp_path)
    path = tmp_path / "result.json"
    temp_path(path).symlink_to(targets["data.json"])  # the temp name this process writes first
    path.symlink_to(targets["notes.md"])
    write_atomic(path, "{}")
    assert path.read_text() == "{}" and not path.is_symlink()
    with pytest.raises(RuntimeError), atomic_open(path) as handle:
        handle.write("half")
        raise RuntimeError("killed half way")
    assert path.read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["outside", "result.json"]
    _untouched(targets)
