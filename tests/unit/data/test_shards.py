"""Building WebDataset shards from tiny course-layout datasets written by conftest (verify: test_verify.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import LABELS
from msa_dist.data.format.index import index_name
from msa_dist.data.format.index_bin import binary_name
from msa_dist.data.format.manifest import load_manifest, shard_urls
from msa_dist.data.shards import build_shards, print_build_summary
from msa_dist.data.verify import verify_shards


def read_split(shard_dir: Path, split: str) -> list[dict]:
    """All samples of a split, read back with webdataset in shard order."""
    pipeline = wds.DataPipeline(wds.SimpleShardList(shard_urls(shard_dir, split)), wds.tarfile_to_samples())
    return list(pipeline)


def shard_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.tar"))


def test_roundtrip(shard_dir, raw_dataset):
    manifest = load_manifest(shard_dir)
    assert list(manifest["splits"]) == ["train", "val", "test"]
    seen = {}
    for split in ("train", "val"):
        samples = read_split(shard_dir, split)
        assert [s["__key__"] for s in samples] == manifest["splits"][split]["guids"]
        for s in samples:
            guid = s["__key__"]
            assert int(s["cls"].decode("ascii")) == raw_dataset.label_index(guid)
            assert s["txt"].decode("utf-8") == raw_dataset.texts[guid]
            assert s["jpg"] == (raw_dataset.data_dir / f"{guid}.jpg").read_bytes()
            seen[guid] = split
    assert sorted(seen) == sorted(raw_dataset.labels)
    test = read_split(shard_dir, "test")
    assert [s["__key__"] for s in test] == raw_dataset.test
    assert all("cls" not in s for s in test)
    assert [s["txt"].decode("utf-8") for s in test] == [raw_dataset.texts[g] for g in raw_dataset.test]
    encodings = list(raw_dataset.encodings.values())
    assert manifest["decodings"] == {"utf-8": encodings.count("utf-8"), "gb18030": encodings.count("gb18030")}
    assert manifest["decodings"]["gb18030"] > 0
    assert manifest["skipped"] == []
    assert all(s["samples"] <= 4 for split in manifest["splits"].values() for s in split["shards"])
    assert manifest["splits"]["train"]["shards"][0]["name"] == "train-000000.tar"


def _edit_labels(path: Path, guid: str, new_line: str) -> None:
    lines = path.read_text().splitlines()
    lines = [new_line if line.split(",")[0] == guid else line for line in lines]
    path.write_text("\n".join(lines) + "\n")


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line + "\n")


def _case_missing_image(ds):
    (ds.data_dir / "1.jpg").unlink()
    return "1", "image file missing", True


def _case_missing_text(ds):
    (ds.data_dir / "2.txt").unlink()
    return "2", "text file missing", True


def _case_bad_jpeg(ds):
    (ds.data_dir / "3.jpg").write_bytes(b"this is not a jpeg")
    return "3", "image does not decode", True


def _case_truncated_jpeg(ds):
    path = ds.data_dir / "4.jpg"
    path.write_bytes(path.read_bytes()[:300])
    return "4", "image does not decode", True


def _case_empty_text(ds):
    (ds.data_dir / "5.txt").write_bytes(b" \r\n\t ")
    return "5", "text is empty", True


def _case_undecodable_text(ds):
    (ds.data_dir / "6.txt").write_bytes(b"caf\xff\x80 bytes")
    return "6", "text is neither UTF-8 nor GB18030", True


def _case_unknown_tag(ds):
    _edit_labels(ds.root / "train.txt", "7", "7,happy")
    return "7", "unknown tag", True


def _case_label_in_test_file(ds):
    guid = ds.test[0]
    _edit_labels(ds.root / "test_without_label.txt", guid, f"{guid},positive")
    return guid, "unknown tag", True


def _case_duplicate_in_train(ds):
    _append(ds.root / "train.txt", "8,negative")
    return "8", "duplicate guid", False  # the first listing is kept


def _case_train_guid_in_test(ds):
    _append(ds.root / "test_without_label.txt", "9,null")
    return "9", "duplicate guid", False


def _case_dot_in_guid(ds):
    for ext in ("jpg", "txt"):
        (ds.data_dir / f"99.5.{ext}").write_bytes((ds.data_dir / f"1.{ext}").read_bytes())
    _append(ds.root / "train.txt", "99.5,positive")
    return "99.5", "guid contains '.'", True


def _case_malformed_line(ds):
    _append(ds.root / "train.txt", "10,positive,extra")
    return "10", "malformed line", False  # guid 10 stays from its own well-formed line


BAD_CASES = [
    _case_missing_image,
    _case_missing_text,
    _case_bad_jpeg,
    _case_truncated_jpeg,
    _case_empty_text,
    _case_undecodable_text,
    _case_unknown_tag,
    _case_label_in_test_file,
    _case_duplicate_in_train,
    _case_train_guid_in_test,
    _case_dot_in_guid,
    _case_malformed_line,
]


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda f: f.__name__[len("_case_") :])
def test_bad_record_is_skipped_and_listed(tmp_path, raw_dataset, case):
    guid, reason, removed = case(raw_dataset)
    manifest = build_shards(raw_dataset.root, tmp_path / "out", val_fraction=0.25)
    assert [(s["guid"], s["reason"]) for s in manifest["skipped"]] == [(guid, reason)]
    written = [g for split in manifest["splits"].values() for g in split["guids"]]
    assert len(written) == len(set(written))
    originally_listed = guid in raw_dataset.labels or guid in raw_dataset.test
    assert (guid in written) == (not removed)
    n_listed = len(raw_dataset.labels) + len(raw_dataset.test)
    assert len(written) == n_listed - int(removed and originally_listed)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["skipped"] == manifest["skipped"]


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda f: f.__name__[len("_case_") :])
def test_bad_record_strict_raises_and_writes_nothing(tmp_path, raw_dataset, case):
    guid, reason, _ = case(raw_dataset)
    with pytest.raises(MsaDistError, match=f"^strict: guid {guid}: {reason}"):
        build_shards(raw_dataset.root, tmp_path / "out", strict=True)
    assert not (tmp_path / "out").exists()


def test_summary_lists_skipped(tmp_path, raw_dataset):
    from rich.console import Console

    _case_missing_image(raw_dataset)
    manifest = build_shards(raw_dataset.root, tmp_path / "out")
    console = Console(record=True, width=120)
    print_build_summary(manifest, console)
    text = console.export_text()
    assert "skipped 1 records: image file missing 1" in text
    assert "guid 1 (train/val, train.txt line 2): image file missing (data/1.jpg)" in text
    assert "gb18030" in text


def test_strict_failure_keeps_previous_set(tmp_path, raw_dataset):
    out = tmp_path / "out"
    build_shards(raw_dataset.root, out, shard_size=3)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _case_bad_jpeg(raw_dataset)
    with pytest.raises(MsaDistError, match="strict: guid 3"):
        build_shards(raw_dataset.root, out, shard_size=5, strict=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    "train_txt, match",
    [
        (None, "has no train.txt"),
        (b"1,positive\n2,negative\n", "header 'guid,tag'"),
        (b"guid,tag\n1,pos\xffitive\n", "not UTF-8"),
        (b"", "is empty"),
    ],
)
def test_malformed_train_file_raises(tmp_path, raw_dataset, train_txt, match):
    path = raw_dataset.root / "train.txt"
    if train_txt is None:
        path.unlink()
    else:
        path.write_bytes(train_txt)
    with pytest.raises(MsaDistError, match=match):
        build_shards(raw_dataset.root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_data_root_raises(tmp_path):
    with pytest.raises(MsaDistError, match="DATA_ROOT .*nope is not a directory"):
        build_shards(tmp_path / "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels_file": "x.txt"}, "go together"),
        ({"val_fraction": 1.0}, "val-fraction"),
        ({"shard_size": 0}, "shard-size"),
        ({"labels_file": "missing.txt", "split_name": "extra"}, "labels file not found"),
        ({"labels_file": "x.txt", "split_name": "a-b"}, "--split name"),
        ({"image_size": 16, "jpeg_quality": 0}, "jpeg-quality"),
    ],
)
def test_bad_options_raise(tmp_path, raw_dataset, kwargs, match):
    with pytest.raises(MsaDistError, match=match):
        build_shards(raw_dataset.root, tmp_path / "out", **kwargs)


def test_out_dir_that_is_a_file_raises(tmp_path, raw_dataset):
    (tmp_path / "out").write_text("not a dir")
    with pytest.raises(MsaDistError, match="not a directory"):
        build_shards(raw_dataset.root, tmp_path / "out")


def test_shard_urls_unknown_split(shard_dir):
    with pytest.raises(MsaDistError, match="split 'dev' is not in .*splits: train, val, test"):
        shard_urls(shard_dir, "dev")
    assert all(Path(u).is_absolute() and Path(u).is_file() for u in shard_urls(shard_dir, "train"))


def test_rebuild_replaces_old_set(tmp_path, raw_dataset):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("keep me")
    build_shards(raw_dataset.root, out, shard_size=2)
    assert "train-000005.tar" in shard_files(out)
    manifest = build_shards(raw_dataset.root, out, shard_size=100)
    assert shard_files(out) == ["test-000000.tar", "train-000000.tar", "val-000000.tar"]
    # each shard with its index beside it; the stale shards and indexes are gone
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "README.md",
            "manifest.json",
            *shard_files(out),
            *(index_name(n) for n in shard_files(out)),
            *(binary_name(n) for n in shard_files(out)),
        ]
    )
    assert (out / "README.md").read_text() == "keep me"
    assert load_manifest(out) == manifest
    verify_shards(out)


def test_split_is_stratified_and_deterministic(tmp_path, raw_factory):
    ds = raw_factory(
        tmp_path / "raw",
        n_per_class={"positive": 20, "neutral": 10, "negative": 5},
        n_test=0,
        gb18030_every=0,
        image_size=(8, 8),
    )
    a = build_shards(ds.root, tmp_path / "a", val_fraction=0.2, seed=3)
    b = build_shards(ds.root, tmp_path / "b", val_fraction=0.2, seed=3)
    c = build_shards(ds.root, tmp_path / "c", val_fraction=0.2, seed=4)
    assert a["splits"]["val"]["class_counts"] == {"positive": 4, "neutral": 2, "negative": 1}
    assert a["splits"]["train"]["class_counts"] == {"positive": 16, "neutral": 8, "negative": 4}
    assert a["splits"] == b["splits"]  # same guids, same order, same sha256
    assert set(a["splits"]["val"]["guids"]) != set(c["splits"]["val"]["guids"])
    for split in ("train", "val"):
        guids = a["splits"][split]["guids"]
        counts = {label: sum(ds.labels[g] == label for g in guids) for label in LABELS}
        assert counts == a["splits"][split]["class_counts"]


def test_image_size_reencodes(tmp_path, raw_factory):
    ds = raw_factory(tmp_path / "raw", n_per_class=2, n_test=1, image_size=(60, 40))
    manifest = build_shards(ds.root, tmp_path / "out", val_fraction=0.5, image_size=16)
    assert manifest["options"]["image_size"] == 16
    samples = read_split(tmp_path / "out", "train")
    for s in samples:
        original = (ds.data_dir / f"{s['__key__']}.jpg").read_bytes()
        image = Image.open(io.BytesIO(s["jpg"]))
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (24, 16))
        assert len(s["jpg"]) < len(original)


def test_jpeg_quality_is_applied_and_recorded(tmp_path, raw_factory):
    ds = raw_factory(tmp_path / "raw", n_per_class=2, n_test=0, image_size=(96, 80))
    sizes = {}
    for quality in (40, 95):
        manifest = build_shards(
            ds.root, tmp_path / f"q{quality}", val_fraction=0.5, image_size=64, jpeg_quality=quality
        )
        assert manifest["options"]["jpeg_quality"] == quality
        sizes[quality] = sum(len(s["jpg"]) for s in read_split(tmp_path / f"q{quality}", "train"))
    assert sizes[40] < sizes[95]
    kept = build_shards(ds.root, tmp_path / "orig", val_fraction=0.5)  # originals: no quality applies
    assert kept["options"]["image_size"] == 0 and kept["options"]["jpeg_quality"] is None


def test_labels_file_into_named_split(tmp_path, raw_dataset):
    labels = tmp_path / "extra.txt"
    rows = [("3", "negative"), ("1", "null"), ("2", "positive")]
    labels.write_text("guid,tag\n" + "".join(f"{g},{t}\n" for g, t in rows))
    manifest = build_shards(raw_dataset.root, tmp_path / "out", labels_file=labels, split_name="extra")
    assert list(manifest["splits"]) == ["extra"]
    info = manifest["splits"]["extra"]
    assert (info["samples"], info["labelled"]) == (3, 2)
    assert info["class_counts"] == {"positive": 1, "neutral": 0, "negative": 1}
    samples = read_split(tmp_path / "out", "extra")
    assert [s["__key__"] for s in samples] == ["3", "1", "2"]
    assert [s.get("cls") for s in samples] == [b"2", None, b"0"]


def test_a_train_split_with_null_tags_is_refused_in_one_line(tmp_path, raw_dataset):
    """`--labels F --split train` with a `null` tag: training says so, instead of an index error."""
    from msa_dist.engine.trainer import class_weights

    labels = tmp_path / "train-labels.txt"
    labels.write_text("guid,tag\n3,negative\n1,null\n2,positive\n")
    build_shards(raw_dataset.root, tmp_path / "out", labels_file=labels, split_name="train")
    with pytest.raises(MsaDistError, match="has 1 of 3 samples without a label"):
        class_weights(str(tmp_path / "out"))
