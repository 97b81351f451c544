"""Shared fixtures: tiny course-layout datasets written with PIL, and shards built from them.

- `raw_factory(root, ...)` writes a DATA_ROOT (`train.txt`, `test_without_label.txt`,
  `data/<guid>.jpg|.txt`) and returns a `RawDataset` describing exactly what was written.
  Images are small real JPEGs whose colour depends on the class; texts carry a class word, so a
  tiny model can learn from either modality. Some texts are UTF-8 with emoji and curly quotes,
  every `gb18030_every`-th one is GB18030-encoded Chinese (not valid UTF-8), like the real data.
- `raw_dataset`: the factory's default dataset under `tmp_path / "raw"`.
- `shard_dir`: shards of `raw_dataset` built into `tmp_path / "shards"` (several shards per split).
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Union

import pytest
from PIL import Image

from msa_dist.common.labels import LABELS

CLASS_RGB = {"positive": (220, 60, 60), "neutral": (60, 200, 60), "negative": (60, 60, 220)}
UTF8_TEXTS = {
    "positive": "Great day at the beach \U0001F600 \u201cso happy\u201d #sun",
    "neutral": "Bus timetable for Monday \u2014 route {i} \U0001F68C",
    "negative": "Awful traffic again \U0001F620 \u2018worst\u2019 commute #fail",
}
GB18030_TEXTS = {
    "positive": "今天真开心 好极了 #开心",
    "neutral": "公交时刻表 第{i}路…",
    "negative": "太糟糕了 很难过 #难过",
}


@dataclass
class RawDataset:
    """What `raw_factory` wrote: guids, tags, texts (as build_shards should decode them) and encodings."""
    root: Path
    labels: dict[str, str]  # labelled guid -> tag, in train.txt order
    test: list[str]  # unlabelled guids, in test_without_label.txt order
    texts: dict[str, str] = field(default_factory=dict)  # guid -> expected text (stripped, no BOM)
    encodings: dict[str, str] = field(default_factory=dict)  # guid -> "utf-8" | "gb18030"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def label_index(self, guid: str) -> int:
        return LABELS.index(self.labels[guid])


def write_jpeg(path: Path, rgb: tuple[int, int, int], size: tuple[int, int], shade: int = 0) -> None:
    """A small real JPEG: a flat colour with a horizontal ramp so images of one class differ."""
    width, height = size
    image = Image.new("RGB", size, rgb)
    pixels = image.load()
    for x in range(width):
        for y in range(0, height, 4):
            pixels[x, y] = tuple(min(255, c + (x + shade) % 32) for c in rgb)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    path.write_bytes(buf.getvalue())


def make_raw_dataset(root: Path, n_per_class: Union[int, Mapping[str, int]] = 6, n_test: int = 4,
                     gb18030_every: int = 3, image_size: tuple[int, int] = (48, 40),
                     seed: int = 0) -> RawDataset:
    """Write a course-layout dataset under `root`; guids are "1", "2", ... (classes interleaved)."""
    counts = {label: n_per_class for label in LABELS} if isinstance(n_per_class, int) else dict(n_per_class)
    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    tags = [label for i in range(max(counts.values(), default=0)) for label in LABELS if i < counts.get(label, 0)]
    tags += ["null"] * n_test
    ds = RawDataset(root, labels={}, test=[])
    for i, tag in enumerate(tags):
        guid = str(i + 1)
        style = LABELS[i % len(LABELS)] if tag == "null" else tag
        if gb18030_every and i % gb18030_every == gb18030_every - 1:
            text, encoding = GB18030_TEXTS[style].format(i=i), "gb18030"
            raw = text.encode("gb18030")
            assert not _is_utf8(raw), "a GB18030 fixture text must not also be valid UTF-8"
        else:
            text, encoding = UTF8_TEXTS[style].format(i=i), "utf-8"
            raw = text.encode("utf-8")
        # Surrounding whitespace like the real files (trailing " \n"), and now and then a UTF-8
        # BOM in front; decoding strips both.
        bom = b"\xef\xbb\xbf" if encoding == "utf-8" and i % 7 == 5 else b""
        (root / "data" / f"{guid}.txt").write_bytes(bom + b"  " + raw + b" \n")
        write_jpeg(root / "data" / f"{guid}.jpg", CLASS_RGB[style], image_size, shade=i)
        ds.texts[guid], ds.encodings[guid] = text, encoding
        if tag == "null":
            ds.test.append(guid)
        else:
            ds.labels[guid] = tag
    # The test file lists its guids in a shuffled order: the test split must keep this order.
    random.Random(seed).shuffle(ds.test)
    write_labels(root / "train.txt", ds.labels.items())
    write_labels(root / "test_without_label.txt", ((guid, "null") for guid in ds.test))
    return ds


def write_labels(path: Path, rows) -> None:
    """Write a `guid,tag` labels file."""
    path.write_text("guid,tag\n" + "".join(f"{guid},{tag}\n" for guid, tag in rows))


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.fixture(scope="session", autouse=True)
def checkpoint_key_dir(tmp_path_factory) -> Iterator[Path]:
    """MSA_DIST_CONFIG_DIR for the whole session (this process and the runs it starts): the key that
    vouches for DeepSpeed checkpoints (engine/engine/checkpoint/trust.py) is made there, never in the real home."""
    key_dir = tmp_path_factory.mktemp("msa-dist-config")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MSA_DIST_CONFIG_DIR", str(key_dir))
        # the tiny model's WordPiece cache (engine/run/artifacts.py), never in the real home either
        patch.setenv("MSA_DIST_CACHE", str(tmp_path_factory.mktemp("msa-dist-cache")))
        yield key_dir


@pytest.fixture
def raw_factory() -> Callable[..., RawDataset]:
    """`make_raw_dataset(root, n_per_class=6, n_test=4, gb18030_every=3, image_size=(48, 40), seed=0)`."""
    return make_raw_dataset


@pytest.fixture
def raw_dataset(tmp_path: Path) -> RawDataset:
    """A default tiny dataset: 6 pairs per class, 4 unlabelled, under tmp_path / "raw"."""
    return make_raw_dataset(tmp_path / "raw")


@pytest.fixture
def shard_dir(tmp_path: Path, raw_dataset: RawDataset) -> Path:
    """Shards of `raw_dataset` in tmp_path / "shards": val 1/3 (2 per class), 4 samples per shard."""
    from msa_dist.data.shards import build_shards

    out = tmp_path / "shards"
    build_shards(raw_dataset.root, out, val_fraction=1 / 3, seed=0, shard_size=4)
    return out
