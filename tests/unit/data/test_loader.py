"""The streaming loader: batch shapes, padding, the epoch order (same for every layout), bytes read,
resume from a saved position, corrupt samples."""

from __future__ import annotations

import io
import os
import random
from collections import Counter

import pytest
import torch
import webdataset as wds

from msa_dist.common.errors import MsaDistError
from msa_dist.config.data_section import DataConfig
from msa_dist.data import stores as storage
from msa_dist.data.format.index import index_name, scan_tar
from msa_dist.data.format.index_bin import binary_name
from msa_dist.data.format.manifest import load_manifest, write_manifest
from msa_dist.data.loading.batching import normalize_images
from msa_dist.data.loading.loader import StreamSpec, build_loader
from msa_dist.data.loading.order import EpochOrder
from msa_dist.data.loading.stream import TrainStream
from msa_dist.data.shards import build_shards
from msa_dist.models.tokenizer import train_wordpiece_tokenizer


@pytest.fixture
def tokenizer():
    words = [
        "great",
        "happy",
        "awful",
        "traffic",
        "bus",
        "timetable",
        "route",
        "monday",
        "beach",
        "sun",
        "worst",
        "commute",
        "day",
    ]
    return train_wordpiece_tokenizer([" ".join(words)] * 5, vocab_size=200)


@pytest.fixture
def big_shards(raw_factory, tmp_path):
    raw = raw_factory(tmp_path / "raw", n_per_class=10, n_test=5)
    out = tmp_path / "shards"
    build_shards(raw.root, out, val_fraction=0.2, seed=0, shard_size=7)
    return out, raw


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory):
    """72 train samples in shards of 13, 29, 6 and 24 samples (a set webdataset tools would write)."""
    from msa_dist.data.indexer import index_shard_set
    from msa_dist.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("uneven")
    raw = write_synthetic_dataset(root / "raw", n_labelled=80, n_test=0, image_px=24)
    build_shards(raw, root / "one", val_fraction=0.1, seed=0, shard_size=1000)
    samples = list(
        wds.DataPipeline(wds.SimpleShardList([str(root / "one" / "train-000000.tar")]), wds.tarfile_to_samples())
    )
    out = root / "uneven"
    out.mkdir()
    start = 0
    for i, n in enumerate((13, 29, 6, 24)):
        with wds.TarWriter(str(out / f"train-{i:06d}.tar"), encoder=False) as sink:
            for s in samples[start : start + n]:
                sink.write({k: v for k, v in s.items() if k != "__url__"})
        start += n
    index_shard_set(str(out))
    return out


def _cfg(**kw) -> DataConfig:
    base = dict(image_size=32, resize_size=36, max_length=12, workers=0)
    return DataConfig(**{**base, **kw})


def _keys(cfg, shard_dir, spec, tok):
    return [k for b in build_loader(cfg, str(shard_dir), spec, tok) for k in b["keys"]]


def test_batch_shapes_and_types(big_shards, tokenizer):
    shard_dir, raw = big_shards
    batch = next(iter(build_loader(_cfg(), str(shard_dir), StreamSpec("train", True, 4), tokenizer)))
    assert batch["images"].shape == (4, 3, 32, 32) and batch["images"].dtype == torch.uint8
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 12
    assert all(raw.label_index(k) == int(label) for k, label in zip(batch["keys"], batch["labels"]))
    norm = normalize_images(batch["images"])
    assert norm.dtype == torch.float32 and float(norm.min()) > -3 and float(norm.max()) < 3


def test_padding_is_per_batch_and_capped(big_shards, tokenizer):
    shard_dir, _ = big_shards
    batches = list(build_loader(_cfg(max_length=64), str(shard_dir), StreamSpec("val", False, 1), tokenizer))
    widths = {b["input_ids"].shape[1] for b in batches}
    assert len(widths) > 1, "each batch pads to its own longest text, not to a fixed length"
    for b in batches:  # no all-padding column: padded to the longest sample in the batch
        assert b["attention_mask"][:, -1].any()
    capped = list(build_loader(_cfg(max_length=5), str(shard_dir), StreamSpec("val", False, 4), tokenizer))
    assert max(b["input_ids"].shape[1] for b in capped) == 5


def test_eval_ranks_read_disjoint_parts_that_cover_the_split(big_shards, tokenizer):
    shard_dir, _ = big_shards
    val = [
        _keys(_cfg(workers=2), shard_dir, StreamSpec("val", False, 2, rank=r, world_size=2), tokenizer) for r in (0, 1)
    ]
    assert not set(val[0]) & set(val[1])
    assert sorted(val[0] + val[1]) == sorted(load_manifest(shard_dir)["splits"]["val"]["guids"])


def _global_batches(cfg, shard_dir, tok, world: int, batch: int, accum: int = 1, epoch: int = 0) -> list[set]:
    """The sets of keys of each optimizer step, over all ranks (ranks' streams run side by side)."""
    per_rank = []
    for rank in range(world):
        spec = StreamSpec(
            "train", True, batch, rank=rank, world_size=world, seed=5, epoch=epoch, grad_accum_steps=accum
        )
        stream = TrainStream(cfg, str(shard_dir), spec, tok, epochs=epoch + 1)
        per_rank.append([b["keys"] for b in stream.epoch(epoch)])
        stream.close()
    assert len({len(r) for r in per_rank}) == 1  # equal micro batch counts on every rank
    steps = len(per_rank[0]) // accum
    return [{k for r in per_rank for m in r[s * accum : (s + 1) * accum] for k in m} for s in range(steps)]


def test_epoch_order_depends_on_seed_and_epoch_alone(uneven_shards, tokenizer):
    """The same global batches (as sets) for 1, 2 and 4 ranks, any worker count and accumulation."""
    reference = _global_batches(_cfg(workers=0), uneven_shards, tokenizer, world=1, batch=24)
    assert len(reference) == 3 and all(len(b) == 24 for b in reference)
    for world, workers, batch, accum in ((2, 2, 12, 1), (4, 3, 6, 1), (2, 1, 6, 2), (1, 2, 8, 3)):
        got = _global_batches(_cfg(workers=workers), uneven_shards, tokenizer, world, batch, accum)
        assert got == reference, (world, workers, batch, accum)
    assert _global_batches(_cfg(), uneven_shards, tokenizer, 1, 24, epoch=1) != reference


class RecordingStore(storage.LocalStore):
    """The local store, logging every shard read (from any worker process) to a file."""

    log_path = None

    def read_range(self, name, start, end):
        with open(self.log_path, "a") as f:  # one small O_APPEND write per read: atomic across processes
            f.write(f"{name} {start} {end}\n")
        return super().read_range(name, start, end)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_every_sample_is_read_once_and_bytes_stay_within_the_split(
    uneven_shards, tokenizer, tmp_path, monkeypatch, world
):
    manifest = load_manifest(uneven_shards)
    split_bytes = sum(s["bytes"] for s in manifest["splits"]["train"]["shards"])
    monkeypatch.setattr(storage, "LocalStore", RecordingStore)
    for workers in (1, 2, 3):
        RecordingStore.log_path = log = tmp_path / f"reads-{world}-{workers}.txt"
        keys = []
        for rank in range(world):
            spec = StreamSpec("train", True, 6, rank=rank, world_size=world, seed=1, epoch=2)
            stream = TrainStream(_cfg(workers=workers), str(uneven_shards), spec, tokenizer, epochs=3)
            keys += [k for b in stream.epoch(2) for k in b["keys"]]
            stream.close()
        assert sorted(keys) == sorted(manifest["splits"]["train"]["guids"])  # every sample exactly once
        reads = [line.split() for line in log.read_text().splitlines()]
        ranges = sorted((name, int(a), int(b)) for name, a, b in reads)
        assert all(x[0] != y[0] or x[2] <= y[1] for x, y in zip(ranges, ranges[1:]))  # no byte read twice
        assert sum(b - a for _, a, b in ranges) <= 1.05 * split_bytes
        assert len(ranges) < len(keys)  # runs of consecutive samples came in one request


def _same_shard_pairs(batches: list[list[str]], shard_of: dict) -> float:
    pairs = same = 0
    for keys in batches:
        for i in range(len(keys)):
            for j in range(i + 1, len(keys)):
                pairs += 1
                same += shard_of[keys[i]] == shard_of[keys[j]]
    return same / pairs


def test_shuffles_better_than_the_old_shard_stream():
    """How often two samples of one batch of 32 come from the same shard, on the real data's layout
    (3,600 train samples in shards of 1,000): the old loader streamed the shards in a shuffled
    order through a 500-sample buffer; the new order mixes chunks of 4 from the whole split."""
    sizes = [1000, 1000, 1000, 600]
    shard_of = [s for s, n in enumerate(sizes) for _ in range(n)]
    order = EpochOrder(sizes, chunk_samples=4, seed=0, epoch=0)
    new_ids = order.ids(0, order.size).tolist()
    new = _same_shard_pairs([new_ids[i : i + 32] for i in range(0, 3584, 32)], shard_of)
    shard_order = list(range(len(sizes)))
    random.Random(0).shuffle(shard_order)
    stream = [i for s in shard_order for i in range(sum(sizes[:s]), sum(sizes[: s + 1]))]
    old_ids = list(wds.shuffle(500, initial=500, rng=random.Random(0))(iter(stream)))
    old = _same_shard_pairs([old_ids[i : i + 32] for i in range(0, 3584, 32)], shard_of)
    perfect = sum(n * (n - 1) for n in sizes) / (3600 * 3599)
    # measured: new 0.32, old 0.63, a perfect shuffle 0.26
    assert new < 0.6 * old and new < perfect + 0.1, (new, old, perfect)


def test_augmentation_is_per_sample_whatever_the_layout(big_shards, tokenizer):
    shard_dir, _ = big_shards
    one = {
        k: img
        for b in build_loader(_cfg(), str(shard_dir), StreamSpec("train", True, 4, seed=1), tokenizer)
        for k, img in zip(b["keys"], b["images"])
    }
    two = {
        k: img
        for r in (0, 1)
        for b in build_loader(
            _cfg(workers=2), str(shard_dir), StreamSpec("train", True, 2, seed=1, rank=r, world_size=2), tokenizer
        )
        for k, img in zip(b["keys"], b["images"])
    }
    assert set(one) == set(two) and all(torch.equal(one[k], two[k]) for k in one)


def test_train_stream_reuses_memory_only_after_release_and_resumes_from_its_state(big_shards, tokenizer):
    shard_dir, _ = big_shards
    cfg = _cfg(workers=2)
    # 5 batches an epoch (not a multiple of the 2 workers)
    full = TrainStream(
        cfg, str(shard_dir), StreamSpec("train", True, 2, seed=4), tokenizer, epochs=3, batches_per_epoch=5
    )
    blocks, stream_keys, states = set(), [], []
    for batch in full.batches():  # each batch dropped before the next: its block can be reused
        stream_keys.append(batch["keys"])
        states.append(full.state_dict())
        # one block: holding any tensor of the batch keeps the whole block from reuse
        assert batch["images"].untyped_storage().data_ptr() == batch["input_ids"].untyped_storage().data_ptr()
        blocks.update((worker, index) for _, worker, index in full._out)
    full.close()
    assert len(stream_keys) == 15 and len(blocks) < 15  # blocks were reused
    for e in range(3):  # the same as a loader per epoch
        expected = [
            b["keys"]
            for b in build_loader(_cfg(), str(shard_dir), StreamSpec("train", True, 2, seed=4, epoch=e), tokenizer)
        ][:5]
        assert stream_keys[5 * e : 5 * e + 5] == expected
    assert states[7] == {**states[7], "epoch": 1, "samples_done": 6}
    resumed = TrainStream(
        cfg, str(shard_dir), StreamSpec("train", True, 2, seed=4), tokenizer, epochs=3, batches_per_epoch=5
    )
    resumed.load_state_dict(states[7])
    assert resumed.position == (1, 3)
    assert [b["keys"] for b in resumed.batches()] == stream_keys[8:]
    resumed.close()


def test_a_position_carries_over_to_another_layout_with_the_same_global_batch(uneven_shards, tokenizer):
    spec = StreamSpec("train", True, 6, rank=1, world_size=2, seed=3, epoch=0)
    two = TrainStream(_cfg(), str(uneven_shards), spec, tokenizer, epochs=1)
    seen = [k for _, b in zip(range(3), two.epoch(0)) for k in b["keys"]]
    state = two.state_dict()
    two.close()
    assert state["samples_done"] == 36  # 3 micro rounds of 2 ranks x 6
    one = TrainStream(_cfg(), str(uneven_shards), StreamSpec("train", True, 12, seed=3), tokenizer, epochs=1)
    one.load_state_dict(state)
    rest = [k for b in one.epoch(0) for k in b["keys"]]
    assert len(rest) == 36 and not set(rest) & set(seen)
    odd = TrainStream(_cfg(), str(uneven_shards), StreamSpec("train", True, 24, seed=3), tokenizer, epochs=1)
    with pytest.warns(UserWarning, match="not a whole number of this run's global batches of 24"):
        odd.load_state_dict(state)
    assert odd.position == (0, 0)
    other_seed = TrainStream(_cfg(), str(uneven_shards), StreamSpec("train", True, 12, seed=4), tokenizer, epochs=1)
    with pytest.warns(UserWarning, match="seed 3 -> 4"):
        other_seed.load_state_dict(state)


def test_a_manifest_that_disagrees_with_the_index_is_one_clear_error(big_shards, tokenizer):
    shard_dir, _ = big_shards
    manifest = load_manifest(shard_dir)
    manifest["splits"]["train"]["shards"][0]["samples"] += 3  # the manifest promises more than the shard holds
    write_manifest(shard_dir, manifest)
    with pytest.raises(MsaDistError, match="lists 7 samples, the manifest 10: run `msa-dist shards index"):
        TrainStream(_cfg(workers=2), str(shard_dir), StreamSpec("train", True, 2), tokenizer)
    val_shard = manifest["splits"]["val"]["shards"][0]["name"]
    for sidecar in (index_name(val_shard), binary_name(val_shard)):  # a set with no index at all
        os.remove(shard_dir / sidecar)
    with pytest.raises(MsaDistError, match="has no index"):
        list(build_loader(_cfg(), str(shard_dir), StreamSpec("val", False, 2), tokenizer))


def test_corrupt_sample_is_counted_not_fatal(big_shards, tokenizer):
    shard_dir, _ = big_shards
    manifest = load_manifest(shard_dir)
    bad = shard_dir / "val-000099.tar"
    with wds.TarWriter(str(bad)) as sink:
        sink.write({"__key__": "bad1", "jpg": b"not a jpeg", "txt": "hello", "cls": "0"})
        buf = io.BytesIO()
        from PIL import Image

        Image.new("RGB", (40, 40), (1, 2, 3)).save(buf, format="JPEG")
        sink.write({"__key__": "good1", "jpg": buf.getvalue(), "txt": "fine", "cls": "1"})
    (shard_dir / index_name(bad.name)).write_bytes(scan_tar(bad.read_bytes(), bad.name).to_json())
    manifest["splits"]["val"]["shards"].append({"name": bad.name, "samples": 2, "sha256": ""})
    manifest["splits"]["val"]["samples"] += 2
    write_manifest(shard_dir, manifest)
    loader = build_loader(_cfg(), str(shard_dir), StreamSpec("val", False, 50), tokenizer)
    keys = [k for b in loader for k in b["keys"]]
    assert "good1" in keys and "bad1" not in keys
    assert loader.corrupt.count == 1
    assert Counter(keys)["good1"] == 1


def test_a_run_logs_how_many_samples_it_skipped(tmp_path):
    """A JPEG overwritten with garbage inside a train shard (the tar itself intact): the run goes on,
    its train records and summary count the sample."""
    from dist_utils import records, write_config

    from msa_dist.config.schema import load_config
    from msa_dist.data.format.index import read_index
    from msa_dist.data.stores import open_store
    from msa_dist.data.synthetic import write_synthetic_dataset
    from msa_dist.engine import trainer

    raw = write_synthetic_dataset(tmp_path / "raw", n_labelled=60, n_test=0, image_px=32)
    build_shards(raw, tmp_path / "shards", val_fraction=0.2, seed=0, shard_size=20)
    index = read_index(open_store(str(tmp_path / "shards")), "train-000001.tar")
    offset, size = index.fields["jpg"][3]
    with open(tmp_path / "shards" / "train-000001.tar", "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * size)
    config = write_config(tmp_path / "c.yaml", tmp_path / "shards", "train.epochs=1", "data.workers=2")
    summary = trainer.train(load_config(config), tmp_path / "run")
    assert summary["status"] == "finished" and summary["corrupt_samples"] == 1
    assert records(tmp_path / "run", "train")[-1]["corrupt_samples"] == 1
