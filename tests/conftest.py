"""Shared fixtures: tiny course-layout datasets written with PIL (helpers/raw_data.py), and shards built
from them.

- `raw_factory(root, ...)` writes a DATA_ROOT (`train.txt`, `test_without_label.txt`,
  `data/<guid>.jpg|.txt`) and returns a `RawDataset` describing exactly what was written.
  Images are small real JPEGs whose colour depends on the class; texts carry a class word, so a
  tiny model can learn from either modality. Some texts are UTF-8 with emoji and curly quotes,
  every `gb18030_every`-th one is GB18030-encoded Chinese (not valid UTF-8), like the real data.
- `raw_dataset`: the factory's default dataset under `tmp_path / "raw"`.
- `shard_dir`: shards of `raw_dataset` built into `tmp_path / "shards"` (several shards per split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from raw_data import RawDataset, make_raw_dataset


@pytest.fixture(scope="session", autouse=True)
def checkpoint_key_dir(tmp_path_factory) -> Iterator[Path]:
    """MSA_DIST_CONFIG_DIR for the whole session (this process and the runs it starts): the key that
    vouches for DeepSpeed checkpoints (engine/checkpoint/trust.py) is made there, never in the real home."""
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
