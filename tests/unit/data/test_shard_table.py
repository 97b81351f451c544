"""data/format/shard_table.py: a split's shards as a binary table round-trip through write_manifest and
read like the JSON list (the loader's batches, verification by shard); today's manifests still load."""

from __future__ import annotations

import hashlib
import json

import pytest

from msa_dist.common.errors import MsaDistError
from msa_dist.config.data_section import DataConfig
from msa_dist.data.format.manifest import load_manifest, write_manifest
from msa_dist.data.format.shard_table import ShardTable, shard_column
from msa_dist.data.loading.loader import StreamSpec, build_loader
from msa_dist.data.loading.reader import ShardSet
from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.data.verify import verify_shards
from msa_dist.models.tokenizer import train_wordpiece_tokenizer


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The same 20 train shards of 16 samples with a JSON manifest and with a table manifest."""
    root = tmp_path_factory.mktemp("table")
    raw = write_synthetic_dataset(root / "raw", n_labelled=340, n_test=0, image_px=16)
    build_shards(raw, root / "json", val_fraction=0.06, seed=0, shard_size=16)
    build_shards(raw, root / "table", val_fraction=0.06, seed=0, shard_size=16)
    write_manifest(root / "table", load_manifest(root / "table"), table_above=5)
    return root / "json", root / "table"


def test_the_table_round_trips_and_reads_like_the_list(sets):
    old, new = sets
    written = json.loads((new / "manifest.json").read_text())["splits"]["train"]
    assert "shards" not in written and "guids" not in written and written["shard_table"]["shards"] == 20
    assert "shards" in json.loads((new / "manifest.json").read_text())["splits"]["val"]  # 2 shards: a list
    listed, table = ShardSet(str(old)).shards("train"), ShardSet(str(new)).shards("train")
    assert isinstance(listed, list) and isinstance(table, ShardTable)
    assert [dict(s) for s in listed] == [{**s, "sha256": s["sha256"]} for s in table]
    assert table[-1]["name"] == listed[-1]["name"] and table[3].get("sha256") == listed[3]["sha256"]
    assert shard_column(table, "bytes").tolist() == [s["bytes"] for s in listed]
    assert table.fields == ["cls", "jpg", "txt"] and table[7]["index"] == listed[7]["index"]  # records' layout
    from msa_dist.engine.run.provenance import split_sha256

    assert (
        split_sha256(new, "train") == hashlib.sha256(json.dumps(written["shard_table"]["sha256"]).encode()).hexdigest()
    )
    write_manifest(new, load_manifest(new), table_above=5)  # a loaded table is written back as one
    assert ShardSet(str(new)).shards("train")[5]["sha256"] == listed[5]["sha256"]


def test_the_loader_and_verification_read_a_table_as_they_read_the_list(sets):
    tokenizer = train_wordpiece_tokenizer(["happy sad the a day"] * 5, vocab_size=100)
    keys = []
    for shards in sets:
        for mode in ("chunks", "blocks"):
            cfg = DataConfig(
                image_size=16, resize_size=16, max_length=8, workers=0, read_mode=mode, block_bytes=16384,
                shuffle_buffer_samples=12, canonical_partitions=2,
            )  # fmt: skip
            spec = StreamSpec("train", True, 4, seed=1)
            keys.append([k for b in build_loader(cfg, str(shards), spec, tokenizer) for k in b["keys"]])
    assert keys[:2] == keys[2:] and len(keys[0]) == 320
    assert verify_shards(str(sets[1]))["shards"] == verify_shards(str(sets[0]))["shards"]


def test_a_table_that_does_not_match_the_manifest_is_one_clear_error(sets, tmp_path):
    _, new = sets
    for path in new.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    table = tmp_path / "train.shards.bin"
    data = bytearray(table.read_bytes())
    data[-1] ^= 1  # a checksum byte: the sizes still agree, verification finds it
    table.write_bytes(bytes(data))
    with pytest.raises(MsaDistError, match="shard table .* sha256 differs"):
        verify_shards(str(tmp_path))
    table.write_bytes(bytes(data[:-5]))  # the checksums cut short: found when one is read
    with pytest.raises(MsaDistError, match="cut short"):
        ShardSet(str(tmp_path)).shards("train")[-1]["sha256"]
    table.write_bytes(bytes(data[:100]))  # the counts cut short: found at once
    with pytest.raises(MsaDistError, match="cut short"):
        ShardSet(str(tmp_path))
