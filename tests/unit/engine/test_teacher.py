"""engine/teacher.py: the teacher file written and read back, every malformed file refused in one
line naming it, missing train guids reported, and the targets' rows following the batch's keys."""

from __future__ import annotations

import json
import os

import pytest
import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import LABELS
from msa_dist.engine.teacher import (
    SoftTargets,
    TeacherTargets,
    load_teacher,
    read_teacher_file,
    write_teacher_file,
)


def _valid(probs: dict | None = None) -> dict:
    rows = probs or {"a": [0.7, 0.2, 0.1], "b": [0.1, 0.1, 0.8]}
    return {"format": "msa-dist-teacher", "version": 1, "labels": list(LABELS), "probs": rows}


def test_written_file_reads_back_and_the_targets_follow_the_keys(tmp_path):
    path = tmp_path / "teacher.json"
    probs = torch.tensor([[2.0, 1.0, 1.0], [0.0, 0.5, 0.5], [0.1, 0.1, 0.8]])
    write_teacher_file(path, ["x", "y", "z"], probs, {"members": ["run-a"]})
    table = read_teacher_file(path)
    assert table["x"] == [0.5, 0.25, 0.25] and json.loads(path.read_text())["members"] == ["run-a"]
    targets = load_teacher(path, ["z", "x"])  # rows of other samples are ignored
    out = targets({"keys": ["x", "z", "x"], "labels": torch.tensor([0, 2, 1])}, torch.device("cpu"))
    assert isinstance(out, SoftTargets) and len(out) == 3 and out.labels.tolist() == [0, 2, 1]
    torch.testing.assert_close(out.probs, torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25]]))
    swapped = out[torch.tensor([1, 0, 2])]  # mixup's permutation moves labels and rows together
    assert swapped.labels.tolist() == [2, 0, 1] and swapped.probs[0].tolist() == out.probs[1].tolist()
    assert isinstance(targets, TeacherTargets)


def test_missing_train_guids_are_counted_and_named(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_valid()))
    with pytest.raises(MsaDistError, match=r"no probabilities for 2 of the 3 train samples \(e.g. 'c', 'd'\)"):
        load_teacher(path, ["a", "c", "d"])


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\x80\x04\x95pickle", "not readable JSON"),
        (b'{"format": "msa-dist-teacher"', "not readable JSON"),
        (b"[1, 2]", "not a msa-dist-teacher file"),
        (json.dumps({**_valid(), "version": 2}).encode(), "of version 1"),
        (json.dumps({**_valid(), "labels": ["negative", "neutral", "positive"]}).encode(), '"labels" must be'),
        (json.dumps({**_valid(), "probs": []}).encode(), '"probs" must map'),
        (json.dumps(_valid({"a": [0.5, 0.5]})).encode(), "the row of 'a'"),
        (json.dumps(_valid({"a": [0.5, 0.4, 0.4]})).encode(), "summing to 1"),
        (json.dumps(_valid({"a": [1.5, -0.5, 0.0]})).encode(), "the row of 'a'"),
        (json.dumps(_valid({"a": [True, 0, 0]})).encode(), "the row of 'a'"),
        (json.dumps(_valid({"a": ["1", 0, 0]})).encode(), "the row of 'a'"),
        (
            b'{"format": "msa-dist-teacher", "version": 1, "labels": ["positive", "neutral", "negative"], '
            b'"probs": {"a": [NaN, 0, 1]}}',
            "the row of 'a'",
        ),
    ],
)
def test_a_malformed_file_is_one_line_naming_it(tmp_path, content, says):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(MsaDistError, match="teacher file .*bad.json is not usable") as err:
        read_teacher_file(path)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_link_a_directory_and_a_missing_file_are_refused(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_valid()))
    os.symlink(good, tmp_path / "link.json")
    for path in (tmp_path / "link.json", tmp_path, tmp_path / "none.json"):
        with pytest.raises(MsaDistError, match="not readable JSON"):
            read_teacher_file(path)
