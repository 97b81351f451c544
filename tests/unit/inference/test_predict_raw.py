"""`msa-dist predict` on raw pairs: equal to predictions from shards of the same pairs; bad rows skipped."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest
from run_utils import tiny_config

from msa_dist.cli import main
from msa_dist.common.labels import LABELS
from msa_dist.data.shards import build_shards
from msa_dist.engine.trainer import train

PROB_COLUMNS = [f"prob_{label}" for label in LABELS]


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(params=[0, 32], ids=["original-bytes", "reencoded-32px"])
def trained(request, raw_dataset, tmp_path):
    """A tiny run on shards that keep the original image bytes, or re-encode them (`--image-size 32`)."""
    shards = tmp_path / "shards"
    build_shards(
        raw_dataset.root, shards, val_fraction=1 / 3, seed=0, shard_size=4, image_size=request.param, jpeg_quality=80
    )
    run = tmp_path / "run"
    train(tiny_config(shards, "train.epochs=1"), run)
    return raw_dataset, shards, run


def test_raw_course_folder_equals_shard_predictions(trained, tmp_path):
    raw, shards, run = trained
    from_shards, from_raw = tmp_path / "shards.csv", tmp_path / "raw.csv"
    # --shards defaults to the run's own data.shards
    assert main(["predict", "--run", str(run), "--out", str(from_shards), "--format", "probs"]) == 0
    assert (
        main(["predict", "--run", str(run), "--data", str(raw.root), "--out", str(from_raw), "--batch-size", "3"]) == 0
    )
    a, b = read_csv(from_shards), read_csv(from_raw)
    assert [r["id"] for r in b] == [r["id"] for r in a] == raw.test  # test_without_label.txt order
    assert [r["tag"] for r in b] == [r["tag"] for r in a]
    for ra, rb in zip(a, b):
        assert [float(rb[c]) for c in PROB_COLUMNS] == pytest.approx([float(ra[c]) for c in PROB_COLUMNS], abs=2e-6)
    # with the logit offsets tuned on val (tuned by the first call, reused by the second)
    assert main(["predict", "--run", str(run), "--out", str(from_shards), "--adjust"]) == 0
    assert (
        main(
            [
                "predict",
                "--run",
                str(run),
                "--data",
                str(raw.root),
                "--out",
                str(from_raw),
                "--adjust",
                "--format",
                "course",
            ]
        )
        == 0
    )
    assert from_raw.read_text() == from_shards.read_text()


def test_csv_inputs_single_pair_and_bad_rows(trained, tmp_path, capsys):
    raw, _, run = trained
    pairs = tmp_path / "inputs"
    (pairs / "img").mkdir(parents=True)
    guids = raw.test[:3]
    for guid in guids:
        shutil.copy(raw.data_dir / f"{guid}.jpg", pairs / "img" / f"{guid}.jpg")
    (pairs / "img" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    rows = [["id", "image", "text"]] + [[g, f"img/{g}.jpg", raw.texts[g]] for g in guids]
    rows += [
        ["nofile", "img/missing.jpg", "hello"],
        ["broken", "img/broken.jpg", "hello"],
        ["notext", f"img/{guids[0]}.jpg", "  "],
        ["short"],
    ]
    with (pairs / "pairs.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "pred.csv"
    capsys.readouterr()
    assert main(["predict", "--run", str(run), "--inputs", str(pairs / "pairs.csv"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped 4 bad rows" in " ".join(captured.out.split())  # rich wraps long lines
    assert "image file missing" in captured.err and "image does not decode" in captured.err
    assert "text is empty" in captured.err and "1 fields, expected 3" in captured.err
    got = read_csv(out)
    assert list(got[0]) == ["id", "tag", *PROB_COLUMNS] and [r["id"] for r in got] == guids
    for row in got:
        assert sum(float(row[c]) for c in PROB_COLUMNS) == pytest.approx(1, abs=1e-5)
    # the same rows in a GB18030 file (the course's other text encoding) give the same output
    gb = pairs / "pairs-gb18030.csv"
    gb.write_bytes((pairs / "pairs.csv").read_text(encoding="utf-8").encode("gb18030"))
    out_gb = tmp_path / "pred-gb.csv"
    assert main(["predict", "--run", str(run), "--inputs", str(gb), "--out", str(out_gb)]) == 0
    assert out_gb.read_text() == out.read_text()
    # the same pair alone, by --image/--text, in the course format
    one = tmp_path / "one.csv"
    assert (
        main(
            [
                "predict",
                "--run",
                str(run),
                "--image",
                str(pairs / "img" / f"{guids[0]}.jpg"),
                "--text",
                raw.texts[guids[0]],
                "--out",
                str(one),
                "--format",
                "course",
            ]
        )
        == 0
    )
    assert read_csv(one) == [{"guid": guids[0], "tag": got[0]["tag"]}]


def test_undecodable_text_in_course_folder_is_skipped(raw_factory, tmp_path, capsys):
    raw = raw_factory(tmp_path / "raw")
    shards = tmp_path / "shards"
    build_shards(raw.root, shards, val_fraction=1 / 3, seed=0, shard_size=4)
    run = tmp_path / "run"
    train(tiny_config(shards, "train.epochs=1"), run)
    (raw.data_dir / f"{raw.test[0]}.txt").write_bytes(b"\xff\xfe\x00 bad \x81")  # neither UTF-8 nor GB18030
    (raw.data_dir / f"{raw.test[1]}.jpg").unlink()
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(run), "--data", str(raw.root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "neither UTF-8 nor GB18030" in err and "image file missing" in err
    assert [r["id"] for r in read_csv(out)] == raw.test[2:]


def test_predict_input_mistakes(trained, tmp_path, capsys):
    _, _, run = trained
    assert main(["predict", "--run", str(run), "--text", "hi", "--out", str(tmp_path / "x.csv")]) == 2
    assert "give one input" in capsys.readouterr().err
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("guid,picture,words\n1,a.jpg,hi\n")
    assert main(["predict", "--run", str(run), "--inputs", str(bad_header), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no 'image' column" in capsys.readouterr().err


def test_evaluate_warns_once_when_val_shards_differ(trained, tmp_path, caplog, capsys):
    raw, shards, run = trained
    other = tmp_path / "other"
    build_shards(raw.root, other, val_fraction=1 / 3, seed=1, shard_size=4)  # another val split
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", "--run", str(run)]) == 0
        assert not caplog.records
        assert main(["evaluate", "--run", str(run), "--shards", str(other)]) == 0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "differs from the one" in warnings[0] and "\n" not in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["predict", "--run", str(run), "--shards", str(other), "--out", str(tmp_path / "p.csv")]) == 0
    assert not caplog.records  # the test split is expected to be new data
