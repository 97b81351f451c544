"""Reading the raw course layout: text decoding (synthetic and real files) and image re-encoding."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from msa_dist.data.raw import Record, check_record, decode_text, image_error, list_records, reencode_image

REAL_DATA = Path(__file__).resolve().parents[3].parent / "shared/data/mvsa"


def test_decode_utf8_keeps_characters_and_strips_bom():
    text = " \ufeff\U0001f600 \u201cquoted\u201d caf\u00e9 \n"
    assert decode_text(text.encode("utf-8")) == ("\ufeff\U0001f600 \u201cquoted\u201d caf\u00e9", "utf-8")
    assert decode_text("\ufeffhello \u2026 ".encode("utf-8")) == ("hello \u2026", "utf-8")


def test_decode_falls_back_to_gb18030():
    raw = "  今天很开心… #good \n".encode("gb18030")
    assert decode_text(raw) == ("今天很开心… #good", "gb18030")


def test_decode_rejects_neither():
    with pytest.raises(ValueError, match="neither UTF-8 nor GB18030"):
        decode_text(b"abc\xff\x80")


def _real_text_files() -> dict[str, Path]:
    """The first real text file needing each decoding."""
    if not (REAL_DATA / "data").is_dir():
        pytest.skip(f"real MVSA data not found at {REAL_DATA} (expected ../shared/data/mvsa)")
    found: dict[str, Path] = {}
    for path in sorted((REAL_DATA / "data").glob("*.txt"), key=lambda p: int(p.stem)):
        try:
            path.read_bytes().decode("utf-8")
            found.setdefault("utf-8", path)
        except UnicodeDecodeError:
            found.setdefault("gb18030", path)
        if len(found) == 2:
            return found
    pytest.skip(f"real data at {REAL_DATA} lacks a text file of each encoding")


def test_decode_real_files_of_both_encodings():
    files = _real_text_files()
    text, encoding = decode_text(files["utf-8"].read_bytes())
    assert encoding == "utf-8" and text and text == text.strip()
    raw = files["gb18030"].read_bytes()
    text, encoding = decode_text(raw)
    assert encoding == "gb18030" and text == raw.decode("gb18030").strip()
    # The GB18030 files are mostly English tweets with punctuation such as the ellipsis (A1 AD).
    assert any(ord(ch) > 127 for ch in text)


def test_check_record_real_pair():
    if not (REAL_DATA / "data" / "1.jpg").is_file():
        pytest.skip(f"real MVSA data not found at {REAL_DATA}")
    sample = check_record(Record("1", 0, "train/val", "train.txt", 2), REAL_DATA / "data")
    assert sample.text and sample.encoding in ("utf-8", "gb18030")
    assert image_error(sample.image_path.read_bytes()) is None


def test_image_error_messages():
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, format="JPEG")
    assert image_error(buf.getvalue()) is None
    assert image_error(b"nope") == "not a recognised image format"
    assert "truncated" in image_error(buf.getvalue()[: len(buf.getvalue()) // 2]).lower()


@pytest.mark.parametrize(
    "size, target, expected",
    [
        ((60, 40), 20, (30, 20)),
        ((40, 100), 20, (20, 50)),
        ((30, 20), 64, (30, 20)),  # never upscaled
    ],
)
def test_reencode_resizes_shorter_side(size, target, expected):
    buf = io.BytesIO()
    Image.new("L", size, 128).save(buf, format="PNG")
    image = Image.open(io.BytesIO(reencode_image(buf.getvalue(), target)))
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", expected)


def test_list_records_order_and_destinations(raw_factory, tmp_path):
    ds = raw_factory(tmp_path / "raw", n_per_class=2, n_test=3)
    entries = list_records(ds.root)
    assert [e.guid for e in entries] == list(ds.labels) + ds.test
    assert {e.split for e in entries[: len(ds.labels)]} == {"train/val"}
    assert all(e.split == "test" and e.label is None for e in entries[len(ds.labels) :])
