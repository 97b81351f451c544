"""The binary shard index (data/format/index_bin.py): the same facts as the JSON sidecar, read from a file or
in one request, checked on load, held in a bounded cache; JSON-only sets still read."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from msa_dist.common.errors import MsaDistError
from msa_dist.config.data_section import DataConfig
from msa_dist.data.format.index import index_name, read_index
from msa_dist.data.format.index_bin import (
    CompactIndex,
    IndexCache,
    binary_name,
    load_index,
    shards_to_preload,
    to_binary,
)
from msa_dist.data.format.manifest import load_manifest
from msa_dist.data.loading.loader import StreamSpec, build_loader
from msa_dist.data.loading.reader import ShardSet
from msa_dist.data.shards import build_shards
from msa_dist.data.stores import LocalStore
from msa_dist.data.verify import verify_shards
from msa_dist.models.tokenizer import train_wordpiece_tokenizer


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from msa_dist.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("bin")
    raw = write_synthetic_dataset(root / "raw", n_labelled=40, n_test=3, image_px=24)
    build_shards(raw, root / "shards", val_fraction=0.2, seed=0, shard_size=7)
    return root / "shards"


def _names(shard_dir):
    return [s["name"] for info in load_manifest(shard_dir)["splits"].values() for s in info["shards"]]


def test_the_binary_sidecar_says_what_the_json_one_says(shards):
    store = LocalStore(shards)
    for name in _names(shards):
        assert (shards / binary_name(name)).is_file()
        json_index = read_index(store, name)
        mapped = load_index(store, name)
        assert not isinstance(mapped.records, np.memmap)  # read, not mapped: a truncated file is no SIGBUS
        assert mapped.to_shard_index() == json_index
        assert [list(mapped.members(i)) for i in range(len(mapped))] == [
            list(json_index.members(i)) for i in range(len(json_index))
        ]
        in_memory = CompactIndex.parse((shards / binary_name(name)).read_bytes(), name)  # a remote store's path
        assert in_memory.to_shard_index() == json_index
        assert pickle.loads(pickle.dumps(in_memory)).to_shard_index() == json_index
        assert mapped.memory_bytes < 100 * len(mapped)  # vs ~530 B per sample for parsed JSON


def test_json_sidecars_alone_are_still_read(shards, tmp_path):
    import shutil

    copy = tmp_path / "json-only"
    shutil.copytree(shards, copy)
    for name in _names(copy):
        (copy / binary_name(name)).unlink()
    tok = train_wordpiece_tokenizer(["a b c"] * 3, vocab_size=60)
    cfg = DataConfig(image_size=16, resize_size=16, max_length=8, workers=0)
    keys = [
        [k for b in build_loader(cfg, str(d), StreamSpec("train", True, 4, seed=2), tok) for k in b["keys"]]
        for d in (shards, copy)
    ]
    assert keys[0] == keys[1] and len(keys[0]) == 32
    assert verify_shards(copy)["samples"] == verify_shards(shards)["samples"]


def test_a_bad_or_stale_binary_index_is_one_clear_error(shards, tmp_path):
    import shutil

    copy = tmp_path / "bad"
    shutil.copytree(shards, copy)
    name = _names(copy)[0]
    data = (copy / binary_name(name)).read_bytes()
    (copy / binary_name(name)).write_bytes(data[:-10])
    with pytest.raises(MsaDistError, match="is not a valid shard index .truncated"):
        load_index(LocalStore(copy), name)
    (copy / binary_name(name)).write_bytes(b"garbage")
    with pytest.raises(MsaDistError, match="is not a valid shard index"):
        load_index(LocalStore(copy), name)
    from msa_dist.data.format.index_bin import _HEADER, MAGIC

    for samples, fields, width in (
        (5, 2**31, 8),
        (5, 1, 2**31),
        (2**32 - 1, 1, 8),
    ):  # crafted counts: no hang, no MemoryError
        crafted = _HEADER.pack(MAGIC, samples, fields, width, 5, 100) + b"s\njpg" + b"\0" * 3
        with pytest.raises(MsaDistError, match="is not a valid shard index"):
            CompactIndex.parse(crafted, name)
    index = read_index(LocalStore(copy), name)
    index.ends[0] = index.nbytes + 1  # a range past the end of the shard
    with pytest.raises(MsaDistError, match="outside the shard"):
        CompactIndex.parse(to_binary(index), name)
    (copy / binary_name(name)).write_bytes(data)
    with open(copy / name, "ab") as f:  # the shard rewritten after its index was
        f.write(b"\0" * 512)
    with pytest.raises(MsaDistError, match="is for a shard of"):
        load_index(LocalStore(copy), name)


def test_the_index_cache_holds_a_bounded_number_of_bytes(shards):
    store = LocalStore(shards)
    names = _names(shards)
    one = load_index(store, names[0]).memory_bytes
    cache = IndexCache(max_bytes=3 * one)
    for name in names:
        cache[name] = load_index(store, name)
        assert cache.held_bytes <= 3 * one + one and len(cache) <= 4
    assert list(cache) == names[-len(cache) :]  # the least recently used went first
    assert cache.get(names[-len(cache)]) is not None and list(cache)[-1] == names[-len(cache)]
    assert cache.get(names[0]) is None and cache.full()
    copy = pickle.loads(pickle.dumps(cache))
    assert list(copy) == list(cache) and copy.held_bytes == cache.held_bytes
    copy[names[0]] = load_index(store, names[0])  # the copy works: it has a lock of its own


def test_indexes_are_preloaded_only_when_the_split_fits_the_cache(shards):
    shard_set = ShardSet(str(shards))
    train = shard_set.shards("train")
    assert shards_to_preload(shard_set, train) == train
    shard_set._indexes.max_bytes = 1  # a split far larger than the cache
    assert shards_to_preload(shard_set, train) == train[:1]


def test_a_batch_reads_the_indexes_it_lacks_side_by_side(shards, monkeypatch):
    """At scale most chunks land in shards whose index a worker does not hold: a batch's index reads
    go out together (a remote store's latency once, not once per shard)."""
    import threading

    from msa_dist.data.loading import reader as reader_module
    from msa_dist.data.loading.reader import SampleReader

    sample_reader = SampleReader(ShardSet(str(shards)), "train")
    ids = np.array([sum(sample_reader.sizes[:k]) for k in range(4)])  # a sample of each of 4 shards
    together = threading.Barrier(4, timeout=30)  # broken (an error) unless 4 reads wait at once
    real = reader_module.load_index

    def load_waiting(store, shard):
        together.wait()
        return real(store, shard)

    monkeypatch.setattr(reader_module, "load_index", load_waiting)
    runs = sample_reader.plan(ids)
    assert sorted(run.shard for run in runs) == [0, 1, 2, 3]


def test_a_remote_set_without_binary_sidecars_costs_one_request_per_index(shards):
    """A store that is not a local folder: the binary sidecar is asked for once; where the set has
    none (indexed before them), only the JSON sidecars after that."""
    from msa_dist.data.stores import MissingFile

    class JsonOnlyRemote:
        location = "remote://json-only"

        def __init__(self):
            self.asked = []

        def read(self, name, limit=None):
            self.asked.append(name)
            if name.endswith(".idx.bin"):
                raise MissingFile(f"{name} does not exist")
            return (shards / name).read_bytes()

        def url(self, name):
            return f"{self.location}/{name}"

    store = JsonOnlyRemote()
    names = _names(shards)[:3]
    for name in names:
        assert load_index(store, name).to_shard_index() == read_index(LocalStore(shards), name)
    assert store.asked == [binary_name(names[0]), index_name(names[0]), index_name(names[1]), index_name(names[2])]


def test_shards_index_writes_the_binary_sidecar_too(shards, tmp_path):
    import shutil

    from msa_dist.data.indexer import index_shard_set

    copy = tmp_path / "reindexed"
    shutil.copytree(shards, copy)
    for name in _names(copy):
        (copy / binary_name(name)).unlink()
    index_shard_set(str(copy))
    for name in _names(copy):
        assert load_index(LocalStore(copy), name).to_shard_index() == read_index(LocalStore(copy), name)
