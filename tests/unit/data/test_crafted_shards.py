"""Issue 23, the data side: crafted shards, indexes and manifests end in one line
(MsaDistError) or a counted skip; builds are byte-identical in any process. Raw inputs:
tests/unit/common/test_limits.py."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from security_utils import no_hang, small_jpeg

from msa_dist.common.errors import MsaDistError
from msa_dist.common.limits import cut_text, text_char_limit
from msa_dist.config.data_section import DataConfig
from msa_dist.data.format.index import index_name, read_index, scan_tar
from msa_dist.data.format.manifest import MANIFEST_NAME, check_manifest, load_manifest, write_manifest
from msa_dist.data.indexer import index_shard_set
from msa_dist.data.loading.loader import StreamSpec, build_loader, iter_texts
from msa_dist.data.loading.reader import ShardSet
from msa_dist.data.stores import open_store
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.data.verify import verify_shards
from msa_dist.models.tokenizer import train_wordpiece_tokenizer

REPO = Path(__file__).resolve().parents[3]


def _one_shard_set(root: Path, samples: list[dict]) -> Path:
    """A shard set of one train shard holding `samples` (webdataset dicts), with index and manifest."""
    root.mkdir(parents=True, exist_ok=True)
    tar = root / "train-000000.tar"
    with wds.TarWriter(str(tar), mtime=0) as sink:
        for sample in samples:
            sink.write(sample)
    data = tar.read_bytes()
    (root / index_name(tar.name)).write_bytes(scan_tar(data, tar.name).to_json())
    write_manifest(
        root,
        {
            "format": 1,
            "labels": ["positive", "neutral", "negative"],
            "options": {},
            "splits": {
                "train": {
                    "samples": len(samples),
                    "labelled": 0,
                    "guids": [],
                    "shards": [{"name": tar.name, "samples": len(samples), "bytes": len(data), "sha256": ""}],
                }
            },
            "decodings": {},
            "skipped": [],
        },
    )
    return root


@pytest.fixture
def tokenizer():
    return train_wordpiece_tokenizer(["a b c hello world"] * 4, vocab_size=40)


# -- item 2: byte-identical builds, verify under any hash seed --------------------------------------


def _run(code: str, seed: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_a_build_is_byte_identical_in_any_process_and_verifies_under_any_hash_seed(tmp_path):
    raw = write_synthetic_dataset(tmp_path / "raw", n_labelled=30, n_test=4, image_px=16)
    build = (
        "import sys; from msa_dist.data.shards import build_shards; "
        "build_shards(sys.argv[1], sys.argv[2], shard_size=10)"
    )
    out = tmp_path / "shards"
    copies = []
    for seed in (1, 2):
        result = _run(build, seed, str(raw), str(out))
        assert result.returncode == 0, result.stderr
        copies.append(tmp_path / f"seed{seed}")
        shutil.move(out, copies[-1])
    names = sorted(p.name for p in copies[0].iterdir())
    assert names == sorted(p.name for p in copies[1].iterdir()) and MANIFEST_NAME in names
    for name in names:
        assert (copies[0] / name).read_bytes() == (copies[1] / name).read_bytes(), name
    verify = "import sys; from msa_dist.data.verify import verify_shards; print(verify_shards(sys.argv[1])['samples'])"
    for seed in range(6):  # the old index order failed for most seeds
        result = _run(verify, seed, str(copies[0]))
        assert result.returncode == 0 and result.stdout.strip() == "34", (seed, result.stderr[-500:])


def test_verify_compares_what_an_index_says_not_its_field_order(shard_dir):
    manifest = load_manifest(shard_dir)
    name = manifest["splits"]["train"]["shards"][0]["name"]
    raw = json.loads((shard_dir / index_name(name)).read_bytes())
    raw["fields"] = dict(reversed(list(raw["fields"].items())))
    (shard_dir / index_name(name)).write_text(json.dumps(raw))
    assert verify_shards(str(shard_dir))["samples"] > 0


# -- item 3: tar headers ------------------------------------------------------------------------------


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return f"{n}{body}".encode()


def _tar(members: list[tuple[str, bytes, bytes]]) -> bytes:
    """A GNU tar of (name, type, data) members, written by tarfile as given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _set_header_field(tar: bytes, header_at: int, lo: int, hi: int, value: bytes) -> bytes:
    """`value` into bytes [lo, hi) of the header at `header_at`, with the checksum made right again."""
    out = bytearray(tar)
    out[header_at + lo : header_at + hi] = value.ljust(hi - lo, b"\0")[: hi - lo]
    header = out[header_at : header_at + 512]
    header[148:156] = b" " * 8
    out[header_at + 148 : header_at + 156] = b"%06o\0 " % sum(header)
    return bytes(out)


@pytest.mark.parametrize(
    "pax",
    [
        _pax_record("size", "-1024"),
        _pax_record("size", "-1"),
        b"0 x=\n",
        _pax_record("size", "99999999999999999999999"),
    ],
)
def test_a_bad_pax_header_is_one_line_not_a_loop(pax):
    tar = _tar(
        [("pax", tarfile.XHDTYPE, pax), ("k.txt", tarfile.REGTYPE, b"hello"), ("k.jpg", tarfile.REGTYPE, b"x" * 600)]
    )
    with no_hang(), pytest.raises(MsaDistError, match="not a readable tar"):
        scan_tar(tar, "t.tar")


@pytest.mark.parametrize(
    "size_field",
    [b"\x80" + b"\xff" * 11, b"\xff" * 12, b"-0000001", b"77777777777", b"\x80" + b"\0" * 7 + b"\x7f\xff\xff\xff"],
)
def test_absurd_member_sizes_are_one_line(size_field):
    tar = _set_header_field(
        _tar([("k.txt", tarfile.REGTYPE, b"hello"), ("k.jpg", tarfile.REGTYPE, b"abc")]), 0, 124, 136, size_field
    )
    with no_hang(), pytest.raises(MsaDistError, match="not a readable tar"):
        scan_tar(tar, "t.tar")


def test_shards_index_and_verify_of_a_crafted_tar_are_one_line(tmp_path):
    root = _one_shard_set(tmp_path / "s", [{"__key__": "k", "jpg": small_jpeg(), "txt": b"hi", "cls": b"0"}])
    tar = root / "train-000000.tar"
    tar.write_bytes(
        _tar([("pax", tarfile.XHDTYPE, _pax_record("size", "-1536")), ("k.txt", tarfile.REGTYPE, b"hello")])
    )
    with no_hang(), pytest.raises(MsaDistError, match="not a readable tar"):
        index_shard_set(str(root))


# -- items 4 and 5: raw inputs ------------------------------------------------------------------------


def test_a_huge_text_member_is_cut_before_tokenizing(tmp_path, tokenizer):
    from msa_dist.data.loading.batching import SampleTransform

    cfg = DataConfig(image_size=16, resize_size=16, max_length=16)
    transform = SampleTransform(cfg, train=False, seed=0, epoch=0)
    text = ("word \u00e9\U0001f600 " * 400_000).encode()  # 4.4 MB of multi-byte text
    out = transform({"__key__": "k", "jpg": small_jpeg(), "txt": text, "cls": b"1"})
    assert len(out["text"]) == text_char_limit(16) and out["label"] == 1
    assert cut_text("é".encode() * 10_000, 1) == "é" * text_char_limit(1)  # a cut inside a character


# -- item 7: manifest shard names -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside.tar", "/etc/passwd", "sub/x.tar", "..", ".hidden.tar"])
def test_manifest_shard_names_stay_in_the_folder(tmp_path, name):
    root = _one_shard_set(tmp_path / "s", [{"__key__": "k", "jpg": small_jpeg(), "txt": b"hi", "cls": b"0"}])
    manifest = load_manifest(root)
    manifest["splits"]["train"]["shards"][0]["name"] = name
    write_manifest(root, manifest)
    for call in (lambda: ShardSet(str(root)), lambda: index_shard_set(str(root)), lambda: verify_shards(str(root))):
        with pytest.raises(MsaDistError, match="not a plain file name inside the shard folder"):
            call()
    assert not (tmp_path / "outside.tar.idx.json").exists()


# -- items 10 and 12: the rest of the one-liners ---------------------------------------------------


@pytest.mark.parametrize(
    "manifest",
    [
        [1, 2],
        {"format": 1, "splits": {"train": {"samples": "lots"}}},
        {"format": 1, "splits": {"train": "abc"}},
        {"format": 1, "splits": {"train": {"samples": 1, "shards": "x.tar"}}},
        {"format": 1, "splits": {"train": {"samples": 1, "shards": [{"name": "a.tar"}]}}},
        {"format": 1, "splits": {"train": {"samples": 1}}},
    ],
)
def test_malformed_manifests_are_one_line(manifest):
    with pytest.raises(MsaDistError, match="manifest.json"):
        check_manifest(json.dumps(manifest).encode(), "manifest.json")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda raw: raw["starts"].__setitem__(0, -512), "outside the shard"),
        (lambda raw: raw["ends"].__setitem__(0, 10**12), "outside the shard"),
        (lambda raw: raw.__setitem__("bytes", 10**12), "shard of 1000000000000 bytes, the shard has"),
        (lambda raw: raw["fields"]["jpg"].__setitem__(0, [-5, 10]), "outside its sample"),
        (lambda raw: raw["fields"]["jpg"].__setitem__(0, [600, 10**12]), "outside its sample"),
        (lambda raw: raw.__setitem__("keys", "abc"), "list of printable strings"),
    ],
)
def test_an_index_is_checked_against_its_shard_when_loaded(tmp_path, tokenizer, edit, match):
    root = _one_shard_set(
        tmp_path / "s", [{"__key__": f"k{i}", "jpg": small_jpeg(), "txt": b"hi", "cls": b"0"} for i in range(3)]
    )
    path = root / index_name("train-000000.tar")
    raw = json.loads(path.read_bytes())
    edit(raw)
    if match != "shard of 1000000000000 bytes, the shard has":  # the shard's size is fine, its ranges are not
        raw["bytes"] = (root / "train-000000.tar").stat().st_size
    path.write_text(json.dumps(raw))
    with pytest.raises(MsaDistError, match=match):
        read_index(open_store(str(root)), "train-000000.tar")
    with no_hang(), pytest.raises(MsaDistError, match=match):
        list(
            build_loader(
                DataConfig(image_size=16, resize_size=16, workers=0),
                str(root),
                StreamSpec("train", False, 4),
                tokenizer,
            )
        )


@pytest.mark.parametrize("cls", [b"7", b"-1", b"abc", b"3"])
def test_an_invalid_label_is_a_counted_skip_in_the_loader(tmp_path, tokenizer, cls):
    root = _one_shard_set(
        tmp_path / "s",
        [
            {"__key__": "bad", "jpg": small_jpeg(), "txt": b"hi", "cls": cls},
            {"__key__": "good", "jpg": small_jpeg(), "txt": b"hi", "cls": b"2"},
        ],
    )
    loader = build_loader(
        DataConfig(image_size=16, resize_size=16, workers=0), str(root), StreamSpec("train", False, 4), tokenizer
    )
    batches = list(loader)
    assert [k for b in batches for k in b["keys"]] == ["good"] and batches[0]["labels"].tolist() == [2]
    assert loader.corrupt.count == 1


@pytest.mark.parametrize("cls", [b"7", b"-1", b"abc"])
def test_shards_index_reports_an_invalid_label_as_such(tmp_path, cls):
    root = _one_shard_set(tmp_path / "s", [{"__key__": "bad", "jpg": small_jpeg(), "txt": b"hi", "cls": cls}])
    (root / MANIFEST_NAME).unlink()
    with pytest.raises(MsaDistError, match=r"sample bad has an invalid label cls=b'"):
        index_shard_set(str(root))


def test_a_non_utf8_text_member_does_not_stop_tokenizer_training(tmp_path):
    root = _one_shard_set(
        tmp_path / "s",
        [
            {"__key__": "a", "jpg": small_jpeg(), "txt": "今天".encode("gb18030")},
            {"__key__": "b", "jpg": small_jpeg(), "txt": b"plain words"},
        ],
    )
    texts = list(iter_texts(str(root), "train"))
    assert texts[1] == "plain words" and "\ufffd" in texts[0]
    assert list(iter_texts(str(root), "train", max_chars=5))[1] == "plain"  # the IDF pass cuts as the loader
    assert train_wordpiece_tokenizer(texts, vocab_size=40) is not None


def test_an_index_that_is_a_fifo_is_one_line(tmp_path):
    root = _one_shard_set(tmp_path / "s", [{"__key__": "k", "jpg": small_jpeg(), "txt": b"hi", "cls": b"0"}])
    (root / index_name("train-000000.tar")).unlink()
    os.mkfifo(root / index_name("train-000000.tar"))
    with no_hang(), pytest.raises(MsaDistError, match="is not a regular file"):
        read_index(open_store(str(root)), "train-000000.tar")


@pytest.mark.parametrize("name", ["manifest.json", "train-000000.tar.idx.bin"])
def test_a_manifest_or_binary_index_that_is_a_fifo_is_one_line(tmp_path, name):
    from msa_dist.data.format.index_bin import load_index

    root = _one_shard_set(tmp_path / "s", [{"__key__": "k", "jpg": small_jpeg(), "txt": b"hi", "cls": b"0"}])
    (root / name).unlink(missing_ok=True)
    os.mkfifo(root / name)
    with no_hang(), pytest.raises(MsaDistError, match="not a regular file"):
        if name == "manifest.json":
            open_store(str(root)).read(name)
        else:
            load_index(open_store(str(root)), "train-000000.tar")


def test_shards_show_names_an_invalid_label_and_cuts_a_huge_text(tmp_path):
    from msa_dist.data.show import SHOWN_TEXT_BYTES, show_samples

    root = _one_shard_set(tmp_path / "s", [{"__key__": "k", "jpg": small_jpeg(), "txt": b"w" * 10**6, "cls": b"7"}])
    (row,) = show_samples(str(root), "train", 1)
    assert row["label"] == "invalid (b'7')" and len(row["text"]) == SHOWN_TEXT_BYTES
