"""The streaming loader: batch shapes, per-batch padding, rank/worker split, resume skip, corrupt samples."""
from __future__ import annotations

import io

import pytest
import torch
import webdataset as wds

from msa_dist.config import DataConfig
from msa_dist.data.loader import (StreamSpec, TrainStream, batches_per_rank, build_loader, build_pipeline,
                                  normalize_images)
from msa_dist.data.manifest import load_manifest, write_manifest
from msa_dist.data.shards import build_shards
from msa_dist.errors import MsaDistError
from msa_dist.models.tokenizer import train_wordpiece_tokenizer


@pytest.fixture
def tokenizer():
    words = "great happy awful traffic bus timetable route monday beach sun worst commute day".split()
    return train_wordpiece_tokenizer([" ".join(words)] * 5, vocab_size=200)


@pytest.fixture
def big_shards(raw_factory, tmp_path):
    raw = raw_factory(tmp_path / "raw", n_per_class=10, n_test=5)
    out = tmp_path / "shards"
    build_shards(raw.root, out, val_fraction=0.2, seed=0, shard_size=7)
    return out, raw


def _cfg(**kw) -> DataConfig:
    base = dict(image_size=32, resize_size=36, max_length=12, workers=0, shuffle_buffer=0)
    return DataConfig(**{**base, **kw})


def _keys(cfg, shard_dir, spec, tok):
    return [k for b in build_loader(cfg, str(shard_dir), spec, tok) for k in b["keys"]]


def test_batch_shapes_and_types(big_shards, tokenizer):
    shard_dir, raw = big_shards
    batch = next(iter(build_loader(_cfg(), str(shard_dir), StreamSpec("train", True, 4), tokenizer)))
    assert batch["images"].shape == (4, 3, 32, 32) and batch["images"].dtype == torch.uint8
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 12
    assert all(raw.label_index(k) == int(l) for k, l in zip(batch["keys"], batch["labels"]))
    norm = normalize_images(batch["images"])
    assert norm.dtype == torch.float32 and -3 < float(norm.min()) and float(norm.max()) < 3


def test_padding_is_per_batch_and_capped(big_shards, tokenizer):
    shard_dir, _ = big_shards
    batches = list(build_loader(_cfg(max_length=64), str(shard_dir), StreamSpec("val", False, 1), tokenizer))
    widths = {b["input_ids"].shape[1] for b in batches}
    assert len(widths) > 1, "each batch pads to its own longest text, not to a fixed length"
    for b in batches:  # no all-padding column: padded to the longest sample in the batch
        assert b["attention_mask"][:, -1].any()
    capped = list(build_loader(_cfg(max_length=5), str(shard_dir), StreamSpec("val", False, 4), tokenizer))
    assert max(b["input_ids"].shape[1] for b in capped) == 5


def test_ranks_read_disjoint_parts_that_cover_the_split(big_shards, tokenizer):
    shard_dir, raw = big_shards
    cfg = _cfg()
    val = [_keys(cfg, shard_dir, StreamSpec("val", False, 2, rank=r, world_size=2), tokenizer) for r in (0, 1)]
    assert not set(val[0]) & set(val[1])
    assert sorted(val[0] + val[1]) == sorted(load_manifest(shard_dir)["splits"]["val"]["guids"])
    n = load_manifest(shard_dir)["splits"]["train"]["samples"]
    train = [list(build_loader(cfg, str(shard_dir), StreamSpec("train", True, 3, rank=r, world_size=2), tokenizer))
             for r in (0, 1)]
    expected = batches_per_rank(n, StreamSpec("train", True, 3, world_size=2), workers=0)
    assert min(len(train[0]), len(train[1])) >= expected > 0
    keys = [k for b in train[0] + train[1] for k in b["keys"]]
    assert len(keys) == len(set(keys))


def test_epoch_reshuffles_and_augmentation_is_per_sample(big_shards, tokenizer):
    shard_dir, _ = big_shards
    cfg = _cfg(shuffle_buffer=8)
    e0 = _keys(cfg, shard_dir, StreamSpec("train", True, 4, seed=1, epoch=0), tokenizer)
    assert e0 == _keys(cfg, shard_dir, StreamSpec("train", True, 4, seed=1, epoch=0), tokenizer)
    assert e0 != _keys(cfg, shard_dir, StreamSpec("train", True, 4, seed=1, epoch=1), tokenizer)
    # The same sample gets the same crop whichever rank (and batch) reads it.
    one = {k: img for b in build_loader(cfg, str(shard_dir), StreamSpec("train", True, 4, seed=1), tokenizer)
           for k, img in zip(b["keys"], b["images"])}
    two = {k: img for r in (0, 1)
           for b in build_loader(cfg, str(shard_dir), StreamSpec("train", True, 2, seed=1, rank=r, world_size=2), tokenizer)
           for k, img in zip(b["keys"], b["images"])}
    common = set(one) & set(two)
    assert common and all(torch.equal(one[k], two[k]) for k in common)


def test_resume_skips_consumed_batches(big_shards, tokenizer):
    shard_dir, _ = big_shards
    cfg = _cfg(shuffle_buffer=8)
    spec = StreamSpec("train", True, 3, seed=2, epoch=1)
    full = [b["keys"] for b in build_loader(cfg, str(shard_dir), spec, tokenizer)]
    resumed = [b["keys"] for b in build_loader(cfg, str(shard_dir), StreamSpec(**{**spec.__dict__, "skip_batches": 2}), tokenizer)]
    assert resumed == full[2:]


def _fresh_loader_epoch(cfg, shard_dir, spec, tokenizer, n):
    """What a new DataLoader per epoch gives: its first n batches."""
    return [(b["keys"], b["images"].clone()) for b in list(build_loader(cfg, str(shard_dir), spec, tokenizer))[:n]]


def test_train_stream_runs_epochs_on_without_restarting_workers(big_shards, tokenizer):
    """One DataLoader for all epochs gives each epoch's batches exactly as a fresh loader per
    epoch does, with 2 workers. Holding on to every batch keeps its shared memory out of reuse."""
    shard_dir, _ = big_shards
    cfg = _cfg(shuffle_buffer=8, workers=2)
    stream = TrainStream(cfg, str(shard_dir), StreamSpec("train", True, 2, seed=3), tokenizer, epochs=3)
    n = stream.batches_per_epoch
    assert n == batches_per_rank(24, StreamSpec("train", True, 2), workers=2) == 12
    held = [list(stream.epoch(e)) for e in range(3)]  # every batch kept
    stream.close()
    for e in range(3):
        expected = _fresh_loader_epoch(cfg, shard_dir, StreamSpec("train", True, 2, seed=3, epoch=e), tokenizer, n)
        assert [b["keys"] for b in held[e]] == [keys for keys, _ in expected]
        assert all(torch.equal(b["images"], images) for b, (_, images) in zip(held[e], expected))
    assert held[0][0]["keys"] != held[1][0]["keys"]


def test_train_stream_reuses_memory_only_after_release_and_resumes_exactly(big_shards, tokenizer):
    shard_dir, _ = big_shards
    cfg = _cfg(shuffle_buffer=8, workers=2)
    # 5 batches an epoch (not a multiple of the 2 workers): which worker delivers batch 0 of an
    # epoch changes from epoch to epoch, and a resumed stream starts mid-epoch
    full = TrainStream(cfg, str(shard_dir), StreamSpec("train", True, 2, seed=4), tokenizer, epochs=3,
                       batches_per_epoch=5)
    blocks, stream_keys = set(), []
    for batch in full.batches():  # each batch dropped before the next: its block can be reused
        stream_keys.append(batch["keys"])
        # one block: holding any tensor of the batch keeps the whole block from reuse
        assert batch["images"].untyped_storage().data_ptr() == batch["input_ids"].untyped_storage().data_ptr()
        blocks.update((worker, index) for _, worker, index in full._out)
    full.close()
    assert len(stream_keys) == 15 and len(blocks) < 15  # blocks were reused
    for e in range(3):
        expected = _fresh_loader_epoch(cfg, shard_dir, StreamSpec("train", True, 2, seed=4, epoch=e), tokenizer, 5)
        assert stream_keys[5 * e:5 * e + 5] == [keys for keys, _ in expected]
    resumed = TrainStream(cfg, str(shard_dir), StreamSpec("train", True, 2, seed=4, epoch=1, skip_batches=3),
                          tokenizer, epochs=3, batches_per_epoch=5)
    assert [b["keys"] for b in resumed.batches()] == stream_keys[8:]
    resumed.close()


def test_train_stream_reports_missing_data(big_shards, tokenizer):
    shard_dir, _ = big_shards
    manifest = load_manifest(shard_dir)
    manifest["splits"]["train"]["samples"] += 40  # the manifest promises more than the shards hold
    write_manifest(shard_dir, manifest)
    stream = TrainStream(_cfg(workers=2), str(shard_dir), StreamSpec("train", True, 2), tokenizer)
    assert stream.batches_per_epoch == 32
    with pytest.raises(MsaDistError, match="ran out of training data after 12 of 32 batches in epoch 1"):
        list(stream.epoch(0))  # and the stream stops its workers


def test_corrupt_sample_is_counted_not_fatal(big_shards, tokenizer, tmp_path):
    shard_dir, _ = big_shards
    manifest = load_manifest(shard_dir)
    bad = shard_dir / "val-000099.tar"
    with wds.TarWriter(str(bad)) as sink:
        sink.write({"__key__": "bad1", "jpg": b"not a jpeg", "txt": "hello", "cls": "0"})
        buf = io.BytesIO()
        from PIL import Image
        Image.new("RGB", (40, 40), (1, 2, 3)).save(buf, format="JPEG")
        sink.write({"__key__": "good1", "jpg": buf.getvalue(), "txt": "fine", "cls": "1"})
    manifest["splits"]["val"]["shards"].append({"name": bad.name, "samples": 2, "sha256": ""})
    write_manifest(shard_dir, manifest)
    pipeline = build_pipeline(_cfg(), str(shard_dir), StreamSpec("val", False, 50), tokenizer)
    keys = [k for b in pipeline for k in b["keys"]]
    assert "good1" in keys and "bad1" not in keys
    assert pipeline.corrupt.count == 1
