"""`msa-dist evaluate --hflip`: test-time flips for a run trained without them (data.eval_hflip stays as saved)."""

from __future__ import annotations

import pytest
from run_utils import finished_tiny_run

import msa_dist.engine.evaluation as evaluation
from msa_dist.cli import main
from msa_dist.engine.run.artifacts import load_run_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return finished_tiny_run(tmp_path_factory.mktemp("evaluate-hflip"))


def test_evaluate_hflip_flips_every_batch_and_refuses_adjust(run, monkeypatch, capsys):
    shards, _, run_dir = run
    seen = []
    forward = evaluation._forward

    def spy(model, inputs, hflip):
        seen.append(hflip)
        return forward(model, inputs, hflip)

    monkeypatch.setattr(evaluation, "_forward", spy)
    args = ["evaluate", "--run", str(run_dir), "--shards", str(shards), "--checkpoint", "latest"]
    assert main(args) == 0 and seen and not any(seen)
    seen.clear()
    assert main([*args, "--hflip"]) == 0 and seen and all(seen)
    assert "flipped images averaged in" in capsys.readouterr().out
    assert not load_run_config(run_dir).data.eval_hflip  # the run's saved config is not changed
    assert main([*args, "--hflip", "--adjust"]) == 2
    assert "--hflip with --adjust" in capsys.readouterr().err
