"""Fuzzing the readers of untrusted data (issue 23): valid shards, indexes, manifests and
`predict --inputs` files are mutated (bytes flipped, truncated, tar sizes changed, pax headers
inserted, JSON values replaced or swapped), and every `shards verify`, `shards show`, `shards
index`, loader pass and `predict --inputs` preprocessing must end in one line (MsaDistError) or a
counted skip, within a memory bound (RLIMIT_AS) and a hang bound (an alarm per example).

The CI budget is small and derandomized (a fixed seed: the same examples every run, a few dozen
per target); `FUZZ_EXAMPLES=5000 python -m pytest tests/unit/data/test_fuzz.py` (or
`benchmarks/fuzz.sh`) is the long run.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from fuzz_bounds import bounded, one_line_or_nothing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tar_craft import members, pax_block, pax_record, with_header_field

from msa_dist.config.data_section import DataConfig
from msa_dist.data.format.manifest import write_manifest
from msa_dist.data.indexer import index_shard_set
from msa_dist.data.loading.loader import StreamSpec, build_loader
from msa_dist.data.shards import build_shards
from msa_dist.data.show import show_samples
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.data.verify import verify_shards
from msa_dist.models.tokenizer import train_wordpiece_tokenizer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
FUZZ = settings(
    max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


# -- the pristine files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A small shard set (train 3 shards, val 1) and its files' bytes."""
    root = tmp_path_factory.mktemp("fuzz")
    raw = write_synthetic_dataset(root / "raw", n_labelled=16, n_test=0, image_px=16)
    manifest = build_shards(raw, root / "shards", val_fraction=0.25, seed=0, shard_size=4)
    manifest["options"].update(data_root="raw", out_dir="shards")  # the same bytes wherever tmp_path is
    write_manifest(root / "shards", manifest)
    files = {p.name: p.read_bytes() for p in sorted((root / "shards").iterdir()) if p.is_file()}
    return root / "shards", files


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece_tokenizer(["a b c hello world love hate"] * 4, vocab_size=50)


# -- mutations ------------------------------------------------------------------------------------

JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-1, -512, 0, 1, 511, 512, 10**12, 2**63, "lots", "../x.tar", "/etc/passwd", ""]),
    st.floats(),
    st.text(max_size=12),
    st.lists(st.integers(min_value=-10, max_value=10**6), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def json_edit(draw, doc):
    """`doc` with one value replaced, deleted, or two swapped, somewhere in its tree."""
    parent, key = None, None
    node = doc
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
        elif isinstance(node, list) and node:
            key = draw(st.integers(min_value=0, max_value=len(node) - 1))
        else:
            break
        parent, node = node, node[key]
    if parent is None:
        return draw(JSON_VALUES) if draw(st.booleans()) else doc
    action = draw(st.sampled_from(["replace", "delete", "swap"]))
    if action == "delete" and isinstance(parent, dict):
        del parent[key]
    elif action == "swap" and len(parent) > 1:
        other = draw(st.sampled_from(sorted(parent) if isinstance(parent, dict) else range(len(parent))))
        parent[key], parent[other] = parent[other], parent[key]
    else:
        parent[key] = draw(JSON_VALUES)
    return doc


SIZE_FIELDS = st.one_of(
    st.integers(min_value=0, max_value=8**11 - 1).map(lambda n: b"%011o" % n),
    st.sampled_from([b"-0000001", b"\xff" * 12, b"\x80" + b"\xff" * 11, b"99999999999", b"", b" 1 2"]),
    st.binary(min_size=12, max_size=12),
)


PAX_RECORDS = st.one_of(
    st.builds(
        pax_record,
        st.sampled_from(["size", "path"]),
        st.one_of(st.integers(-(2**40), 2**70).map(str), st.text(max_size=30)),
        st.sampled_from([0, 0, 0, -1, 1, -100, 10**6]),
    ),
    st.binary(max_size=64),
)


@st.composite
def tar_edit(draw, tar: bytes) -> bytes:
    """The tar with a header field rewritten (checksum fixed), a pax header inserted, bytes
    overwritten, or its end cut off."""
    out = bytearray(tar)
    kind = draw(st.sampled_from(["size", "typeflag", "pax", "bytes", "truncate"]))
    at = draw(st.sampled_from(members(tar)))
    if len(out) < at + 512:
        out.extend(bytes(at + 512 - len(out)))
    if kind == "size":
        with_header_field(out, at, 124, 136, draw(SIZE_FIELDS))
    elif kind == "typeflag":
        with_header_field(out, at, 156, 157, draw(st.sampled_from([b"x", b"L", b"g", b"5", b"2", b"K", b"\0"])))
    elif kind == "pax":
        out[at:at] = pax_block(draw(PAX_RECORDS))
    elif kind == "bytes":
        for _ in range(draw(st.integers(min_value=1, max_value=8))):
            pos = draw(st.integers(min_value=0, max_value=len(out) - 1))
            out[pos] = draw(st.integers(min_value=0, max_value=255))
    else:
        del out[draw(st.integers(min_value=0, max_value=len(out))) :]
    return bytes(out)


@st.composite
def shard_set_edit(draw, files: dict[str, bytes]) -> dict[str, bytes]:
    """One or two of the set's files mutated (JSON files as JSON, or as bytes; tars as tars)."""
    out = dict(files)
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        name = draw(st.sampled_from(sorted(files)))
        data = out[name]
        if name.endswith(".tar"):
            out[name] = draw(tar_edit(data))
        elif name.endswith(".json") and draw(st.booleans()):
            try:
                doc = json.loads(data)
            except ValueError:  # already mutated into something else
                doc = None
            out[name] = json.dumps(draw(json_edit(doc))).encode()
        elif not data or draw(st.booleans()):
            out[name] = data[: draw(st.integers(min_value=0, max_value=len(data)))]
        else:
            edited = bytearray(data)
            for _ in range(draw(st.integers(min_value=1, max_value=6))):
                edited[draw(st.integers(min_value=0, max_value=len(edited) - 1))] = draw(st.integers(0, 255))
            out[name] = bytes(edited)
    return out


# -- the targets ----------------------------------------------------------------------------------


def _write(root: Path, files: dict[str, bytes]) -> None:
    for path in root.iterdir():
        if path.is_file() and path.name not in files:
            path.unlink()
    for name, data in files.items():
        (root / name).write_bytes(data)


def _read_split(root: Path, split: str, train: bool, tokenizer) -> None:
    cfg = DataConfig(image_size=16, resize_size=16, max_length=16, workers=0)
    loader = build_loader(cfg, str(root), StreamSpec(split, train, 3), tokenizer)
    for batch in loader:
        assert batch["labels"].min() >= -1 and batch["labels"].max() < 3  # an invalid label is skipped


@given(data=st.data())
@FUZZ
def test_mutated_shard_sets_end_in_one_line_or_a_counted_skip(pristine, tokenizer, data):
    root, files = pristine
    _write(root, data.draw(shard_set_edit(files), label="files"))
    with bounded():
        one_line_or_nothing(lambda: verify_shards(str(root)))
        one_line_or_nothing(lambda: show_samples(str(root), "train", 3))
        for split, train in (("train", True), ("train", False), ("val", False)):
            one_line_or_nothing(lambda split=split, train=train: _read_split(root, split, train, tokenizer))
        one_line_or_nothing(lambda: index_shard_set(str(root)))  # rewrites the indexes of what it can read
        one_line_or_nothing(lambda: _read_split(root, "train", False, tokenizer))


# -- predict --inputs -----------------------------------------------------------------------------


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 20), (10, 200, 90)).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = {"jpg": _image("JPEG"), "png": _image("PNG")}


@st.composite
def image_edit(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(IMAGES)))
    out = bytearray(IMAGES[kind])
    edit = draw(st.sampled_from(["size", "bytes", "truncate", "none"]))
    if edit == "size":  # the stored size in the header: JPEG SOF0 or PNG IHDR
        at = out.find(b"\xff\xc0") + 5 if kind == "jpg" else 16
        width = draw(st.integers(min_value=0, max_value=65535 if kind == "jpg" else 2**31 - 1))
        height = draw(st.integers(min_value=0, max_value=65535 if kind == "jpg" else 2**31 - 1))
        step = 2 if kind == "jpg" else 4
        if kind == "jpg":
            out[at : at + 4] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
        else:
            out[at : at + 2 * step] = width.to_bytes(step, "big") + height.to_bytes(step, "big")
    elif edit == "bytes":
        for _ in range(draw(st.integers(min_value=1, max_value=8))):
            out[draw(st.integers(min_value=0, max_value=len(out) - 1))] = draw(st.integers(0, 255))
    elif edit == "truncate":
        del out[draw(st.integers(min_value=0, max_value=len(out))) :]
    return kind, bytes(out)


CELLS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(['=HYPERLINK("http://x")', "+1", "-1", "@a", "\tx", "a\0b", '"', "line\nbreak", "w " * 70_000]),
)


@given(image=image_edit(), key=CELLS, text=CELLS, extra=st.sampled_from(["", ",x", "\n,,", '"unclosed']))
@FUZZ
def test_mutated_predict_inputs_end_in_one_line_or_a_skipped_row(tmp_path_factory, tokenizer, image, key, text, extra):
    from msa_dist.inference.evaluate import write_predictions
    from msa_dist.inference.predict_raw import pairs_from_csv
    from msa_dist.inference.predictor import Predictor, Preprocessing

    root = tmp_path_factory.mktemp("inputs")
    kind, data = image
    (root / f"i.{kind}").write_bytes(data)
    with open(root / "in.csv", "w", newline="", encoding="utf-8", errors="surrogatepass") as f:
        csv.writer(f).writerow(["id", "image", "text"])
        f.write(f"{csv_cell(key)},i.{kind},{csv_cell(text)}{extra}\n")
    predictor = Predictor(
        model=None,
        tokenizer=tokenizer,
        modality="both",
        preprocessing=Preprocessing(image_size=16, resize_size=16, max_length=16),
    )
    with bounded():

        def run():
            pairs, bad = pairs_from_csv(root / "in.csv")
            if pairs:
                predictor.preprocess([p.image for p in pairs], [p.text for p in pairs])
                write_predictions(
                    root / "out.csv", [(p.key, [0.2, 0.3, 0.5]) for p in pairs], ["positive", "neutral", "negative"]
                )
                previous = csv.field_size_limit(1 << 24)  # an id may be as long as a text
                try:
                    with open(root / "out.csv", newline="") as f:
                        ids = [row[0] for row in list(csv.reader(f))[1:]]
                finally:
                    csv.field_size_limit(previous)
                assert not any(i.startswith(("=", "+", "-", "@", "\t", "\r")) for i in ids), ids

        one_line_or_nothing(run)


def csv_cell(value: str) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow([value])
    return buf.getvalue().rstrip("\r\n")
