"""`msa-dist search` (experiments/search.py, search_space.py, search_report.py): trials sampled by Optuna's
TPE, pruned between epochs, a killed search resumed from its SQLite study, the ranked report; a CV
trial on real tiny training (pruned between folds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from fake_runs import fake_metrics, sweep_cfg

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import load_config, save_config
from msa_dist.experiments.search_space import load_space

optuna = pytest.importorskip("optuna", reason="the search extra (pip install 'msa-dist[search]') is not installed")

from msa_dist.experiments.search import STUDY_FILE, STUDY_NAME, run_search  # noqa: E402

SPACE = {"optim.lr": {"low": 1.0e-5, "high": 1.0e-2, "log": True}, "model.head.hidden": {"choices": [16, 32]}}


class FakeTrain:
    """Stands in for `trainer.train`: val accuracy climbs each epoch toward a peak at optim.lr = 3e-4; asks the
    judge (the pruner) after each epoch like the trainer; `kill_at` raises at that call, as a kill would."""

    def __init__(self, kill_at: int | None = None):
        self.calls: list[tuple[str, float, int]] = []  # (run dir, lr, epochs trained)
        self.kill_at = kill_at

    def __call__(self, cfg, run_dir, judge=None) -> dict:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True)
        save_config(cfg, run_dir / "config.yaml")
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            raise KeyboardInterrupt
        peak = 0.9 - 0.1 * abs(math.log10(cfg.optim.lr) + 3.5)
        records, summary = [], {"status": "finished"}
        for epoch in range(1, cfg.train.epochs + 1):
            metrics = fake_metrics(peak * epoch / cfg.train.epochs)
            records.append({"type": "eval", "epoch": epoch, "step": epoch, "split": "val", **metrics})
            if judge is not None and judge(metrics, epoch):
                summary["early_stop"] = {"by": "pruned", "epoch": epoch}
                break
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        self.calls.append((run_dir.name, cfg.optim.lr, len(records)))
        return summary


def _space(tmp_path, cfg, spec=None):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(spec or SPACE))
    return load_space(path, cfg)


def _trials(run_dir):
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{run_dir / STUDY_FILE}")
    return study.get_trials()


def test_a_search_ranks_its_trials_writes_the_best_config_and_plot(tmp_path):
    cfg, run_dir, train = sweep_cfg(tmp_path), tmp_path / "search", FakeTrain()
    report = run_search(cfg, _space(tmp_path, cfg), run_dir, 4, "accuracy", "none", train_fn=train)
    assert len(train.calls) == 4 and all(epochs == cfg.train.epochs for _, _, epochs in train.calls)
    values = [row["value"] for row in report["trials"]]
    assert values == sorted(values, reverse=True) and [r["rank"] for r in report["trials"]] == [1, 2, 3, 4]
    best = report["trials"][0]
    assert load_config(run_dir / "best_config.yaml").optim.lr == pytest.approx(best["params"]["optim.lr"])
    assert "| # | trial | state |" in (run_dir / "search.md").read_text()
    assert (run_dir / "search.png").stat().st_size > 0 and json.loads((run_dir / "search.json").read_text())["complete"]


def test_a_killed_search_resumes_from_its_study_and_goes_on_to_n_trials(tmp_path):
    cfg, run_dir = sweep_cfg(tmp_path), tmp_path / "search"
    space = _space(tmp_path, cfg)
    run_search(cfg, space, run_dir, 2, "accuracy", "none", train_fn=FakeTrain())
    killer = FakeTrain(kill_at=1)
    with pytest.raises(KeyboardInterrupt):  # trial 2 finishes, trial 3 is killed part-way
        run_search(cfg, space, run_dir, 5, "accuracy", "none", train_fn=killer)
    states = [t.state.name for t in _trials(run_dir)]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "RUNNING"]
    killed_lr = _trials(run_dir)[3].params["optim.lr"]

    train = FakeTrain()
    run_search(cfg, space, run_dir, 5, "accuracy", "none", train_fn=train)
    assert len(train.calls) == 2  # 3 were done: the killed trial again, then one new
    assert train.calls[0][1] == pytest.approx(killed_lr) and train.calls[0][0] == "trial-0004"
    assert [t.state.name for t in _trials(run_dir)] == ["COMPLETE"] * 3 + ["FAIL"] + ["COMPLETE"] * 2
    train = FakeTrain()
    run_search(cfg, space, run_dir, 5, "accuracy", "none", train_fn=train)
    assert train.calls == []  # nothing is redone


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_the_pruner_stops_unpromising_trials_between_epochs(tmp_path, pruner):
    cfg = sweep_cfg(tmp_path)
    cfg.train.epochs = 4
    train = FakeTrain()
    report = run_search(cfg, _space(tmp_path, cfg), tmp_path / "search", 10, "accuracy", pruner, train_fn=train)
    pruned = [r for r in report["trials"] if r["state"] == "PRUNED"]
    assert pruned and all(r["last_step"] < 4 for r in pruned)
    assert sorted(epochs for _, _, epochs in train.calls)[0] < 4  # a pruned trial trained fewer epochs
    assert [r["state"] for r in report["trials"]][: len(report["trials"]) - len(pruned)] == ["COMPLETE"] * (
        len(report["trials"]) - len(pruned)
    )


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"optim.lr": [1, 2]}, "give {low: A, high: B}"),
        ({"optim.lr": {"low": 1.0, "high": 0.1}}, "low < high"),
        ({"optim.lr": {"low": 0.0, "high": 0.1, "log": True}}, "needs low > 0"),
        ({"optim.lr": {"choices": []}}, "non-empty list"),
        ({"optim.nope": {"low": 0.1, "high": 0.2}}, "optim.nope"),
        ({"model.head.dropout": {"low": 0.0, "high": 1.5}}, "model.head.dropout=1.5"),
    ],
)
def test_a_bad_space_fails_in_one_line_before_any_trial(tmp_path, spec, says):
    with pytest.raises(MsaDistError) as err:
        _space(tmp_path, sweep_cfg(tmp_path), spec)
    assert says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_a_cv_search_scores_trials_by_the_fold_mean_on_real_training(shard_dir, tmp_path):
    from run_utils import tiny_config

    cfg = tiny_config(shard_dir, "train.epochs=1", "train.max_steps_per_epoch=2")
    space = _space(tmp_path, cfg, {"optim.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}})
    report = run_search(cfg, space, tmp_path / "search", 2, "macro_f1", "median", cv_folds=2)
    for row in report["trials"]:
        cv = json.loads((tmp_path / "search" / f"trial-{row['trial']:04d}" / "cv.json").read_text())
        assert row["state"] == "COMPLETE" and row["value"] == pytest.approx(cv["mean"]["macro_f1"])
        assert list(row["intermediate"]) == ["0"]  # the running mean after fold 0, before fold 1
