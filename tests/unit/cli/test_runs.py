"""cli/runs.py: the default run dir, and commands that write a local folder refusing a store URL in one line."""

from __future__ import annotations

import pytest

from msa_dist.cli import main
from msa_dist.cli.runs import default_run_dir, local_run_dir
from msa_dist.common.errors import MsaDistError


def test_default_run_dirs():
    assert default_run_dir("configs/cpu_small.yaml") == "runs/cpu_small"
    assert default_run_dir("configs/cpu_small.yaml", "cv") == "runs/cpu_small-cv"


@pytest.mark.parametrize("url", ["s3://bucket/r", "s3:/bucket/r", "gs://b/r"])
def test_a_store_url_is_refused_by_commands_that_write_a_local_folder(url):
    with pytest.raises(MsaDistError, match="`msa-dist sweep` writes a local folder"):
        local_run_dir(url, "sweep")
    assert local_run_dir("runs/s3", "sweep") == "runs/s3"


def test_cv_with_a_store_url_is_one_line_and_makes_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("train: {epochs: 1}\n")
    assert main(["cv", "--config", "c.yaml", "--run-dir", "s3://bucket/r"]) == 2
    assert "writes a local folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "c.yaml"]
