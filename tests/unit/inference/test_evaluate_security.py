"""Issue 29, item 13 (inference/evaluate.py, engine/evaluation.py): `evaluate` and `predict` of a split they
could not read whole fail in one line naming how many samples are missing, instead of a result for part of
the split; so does a manifest whose split size is not its shards'. The shards are served on 127.0.0.1."""

from __future__ import annotations

import json
import shutil

import pytest
from run_utils import finished_tiny_run

from msa_dist.common.errors import MsaDistError
from msa_dist.data.stores import HttpStore
from msa_dist.data.stores.serve import RangeHandler, serving
from msa_dist.inference.evaluate import evaluate, predict


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return finished_tiny_run(tmp_path_factory.mktemp("evaluate-security"))


class Unavailable(RangeHandler):
    """503 for every read of the first val shard (4 of the split's 6 samples)."""

    def _answer(self, body: bool) -> None:
        if self.path.endswith("/val-000000.tar") and "Range" in self.headers:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super()._answer(body)


def test_evaluate_and_predict_of_a_split_read_in_part_are_one_line(run, tmp_path, monkeypatch):
    shards, _, run_dir = run
    monkeypatch.setattr(HttpStore, "RETRIES", 2)  # a 503 stays a 503: no need to wait through four
    assert set(evaluate(str(run_dir), str(shards), "val")) >= {"accuracy", "macro_f1"}  # all 6 read
    with serving(shards, handler=Unavailable) as base:
        with pytest.raises(MsaDistError) as raised:
            evaluate(str(run_dir), base, "val")
        message = str(raised.value)
        assert "\n" not in message and "4 of 6 samples of split 'val'" in message, message
        with pytest.raises(MsaDistError, match="4 of 6 samples of split 'val'"):
            predict(str(run_dir), base, str(tmp_path / "val.csv"), split="val")
    assert not (tmp_path / "val.csv").exists()


def test_a_manifest_whose_split_size_is_not_its_shards_is_one_line(run, tmp_path):
    shards, _, run_dir = run
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["val"]["samples"] += 10  # the split claims samples no shard holds
    manifest["splits"]["val"].pop("guids", None)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MsaDistError, match="states 16 samples in split 'val', its shards 6"):
        evaluate(str(run_dir), str(copy), "val")
