"""`msa-dist search` under torchrun (2 gloo ranks): rank 0 owns the Optuna study, samples each trial and
decides each pruning, and broadcasts both; every rank trains every trial. Single process:
tests/unit/experiments/test_search.py."""

from __future__ import annotations

import pytest
import yaml
from dist_utils import check, run, torchrun_cmd, write_config

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
optuna = pytest.importorskip("optuna", reason="the search extra (pip install 'msa-dist[search]') is not installed")


def test_search_under_torchrun_samples_on_rank_0_and_trains_each_trial_on_both_ranks(tmp_path, shard_dir):
    from msa_dist.experiments.search import STUDY_FILE, STUDY_NAME

    config = write_config(tmp_path / "c.yaml", shard_dir, "train.epochs=2", "train.batch_size=2", "backend.name=ddp")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"optim.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}}))
    run_dir = tmp_path / "search"
    args = ["search", "--config", str(config), "--space", str(space), "--trials", "2", "--run-dir", str(run_dir)]
    result = check(run(torchrun_cmd(args), timeout=400))
    assert result.stdout.count("world: 2 rank(s)") == 2  # one DDP run per trial
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{run_dir / STUDY_FILE}")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(sorted(t.intermediate_values) == [1, 2] for t in trials)  # a pruning question after each epoch
    for trial in trials:  # the params rank 0 sampled are the ones both ranks trained with
        saved = yaml.safe_load((run_dir / f"trial-{trial.number:04d}" / "config.yaml").read_text())
        assert saved["optim"]["lr"] == pytest.approx(trial.params["optim.lr"])
    assert (run_dir / "search.md").is_file() and (run_dir / "best_config.yaml").is_file()
