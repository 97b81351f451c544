"""The blocks read mode (data/loading/blocks.py, shuffle_buffer.py, block_reads.py): every sample once per
epoch, the same batches on every layout whose size divides the canonical partition count, exact resume
(also on another world size), and one request per block, counted by the store."""

from __future__ import annotations

import numpy as np
import pytest

from msa_dist.common.errors import MsaDistError
from msa_dist.config.data_section import DataConfig
from msa_dist.data.loading.blocks import BlockEpoch, BlockTable, BlockTrainPlan, resolve_partitions
from msa_dist.data.loading.loader import StreamSpec, build_loader
from msa_dist.data.loading.reader import ShardSet
from msa_dist.data.loading.shuffle_buffer import ShuffleBuffer
from msa_dist.data.loading.stream import TrainStream
from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.models.tokenizer import train_wordpiece_tokenizer


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """320 train samples in 20 shards of 16 (about 60 KiB each: 4 blocks of 16 KiB)."""
    root = tmp_path_factory.mktemp("blocks")
    raw = write_synthetic_dataset(root / "raw", n_labelled=340, n_test=0, image_px=16)
    build_shards(raw, root / "shards", val_fraction=0.06, seed=0, shard_size=16)
    return root / "shards"


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece_tokenizer(["happy sad the a day"] * 5, vocab_size=100)


def _cfg(**kw) -> DataConfig:
    base = {"image_size": 16, "resize_size": 16, "max_length": 8, "workers": 0, "read_mode": "blocks"}
    return DataConfig(**{**base, "block_bytes": 16384, "shuffle_buffer_samples": 12, "canonical_partitions": 8, **kw})


def _global_batches(cfg, shards, tokenizer, world: int, accum: int, batch: int = 4, seed: int = 1) -> list:
    """Every rank's micro batches, put back in the global order: micro round a of step t on rank r is
    global micro batch (t x accum + a) x world + r."""
    by_global = {}
    for rank in range(world):
        spec = StreamSpec("train", True, batch, rank=rank, world_size=world, seed=seed, grad_accum_steps=accum)
        for i, b in enumerate(build_loader(cfg, str(shards), spec, tokenizer)):
            step, micro = divmod(i, accum)
            by_global[(step * accum + micro) * world + rank] = b["keys"]
    assert sorted(by_global) == list(range(len(by_global)))
    return [by_global[g] for g in range(len(by_global))]


def test_partitions_cut_the_shuffled_blocks_into_equal_disjoint_ranges():
    samples, nbytes = [13, 29, 6, 24, 1], [13_000, 29_000, 6_000, 0, 900]
    table = BlockTable(samples, nbytes, block_bytes=5_000)
    assert table.per_shard.tolist() == [3, 6, 2, 1, 1]  # a shard of unknown size is one block
    for partitions in (1, 3, 8):
        epoch = BlockEpoch(table, seed=2, epoch=1, partitions=partitions)
        got = []
        for q in range(partitions):
            seg = epoch.segments(q)
            ids = [i for f, lo, hi in zip(seg.first_id, seg.lo, seg.hi) for i in range(f, f + hi - lo)]
            assert len(ids) in (table.size // partitions, -(-table.size // partitions))
            got += ids
        assert sorted(got) == list(range(table.size))
    rng = np.random.default_rng(0)
    for trial in range(20):  # random uneven splits, some shards of unknown size; 64-slot windows crossed
        samples = rng.integers(1, 50, rng.integers(1, 60))
        nbytes = samples * rng.integers(50, 200, len(samples)) * (rng.random(len(samples)) > 0.1)
        table = BlockTable(samples, nbytes, int(rng.integers(100, 3000)))
        for partitions in (1, 7, 16):
            epoch = BlockEpoch(table, trial, 1, partitions)
            got = []
            for q in range(partitions):
                seg = epoch.segments(q)
                assert (seg.hi > seg.lo).all()
                got += [i for f, lo, hi in zip(seg.first_id, seg.lo, seg.hi) for i in range(f, f + hi - lo)]
            assert sorted(got) == list(range(table.size))
    table = BlockTable([13, 29, 6, 24, 1], [13_000, 29_000, 6_000, 0, 900], block_bytes=5_000)
    one, other = BlockEpoch(table, 2, 1, 1).segments(0), BlockEpoch(table, 2, 2, 1).segments(0)
    assert one.first_id.tolist() != other.first_id.tolist()  # each epoch its own block order


def test_the_shuffle_buffer_emits_each_id_once_and_a_replay_resumes_it_exactly():
    table = BlockTable([40, 40, 17], [40, 40, 17], block_bytes=10)
    segments = BlockEpoch(table, 0, 0, 1).segments(0)
    stream = [i for i, _ in ShuffleBuffer(segments, 16, 0, 0, 0).take(1000)]
    assert sorted(stream) == list(range(97)) and stream != sorted(stream)
    assert stream == [i for i, _ in ShuffleBuffer(segments, 16, 0, 0, 0).take(1000)]
    assert stream != [i for i, _ in ShuffleBuffer(segments, 16, 0, 0, 1).take(1000)]  # its own key per partition
    for done in (0, 1, 30, 96):
        replay = ShuffleBuffer(segments, 16, 0, 0, 0)
        replay.skip(done)
        pending, entered_segments = replay.pending(), replay.entered
        rest = [i for i, _ in replay.take(1000)]
        assert rest == stream[done:]
        # what the resumed worker keeps of the blocks it had read: exactly their samples still to come
        kept = {int(segments.first_id[s]) + o for s, offsets in pending.items() for o in offsets}
        entered = {
            int(f) + o
            for f, lo, hi in list(zip(segments.first_id, segments.lo, segments.hi))[:entered_segments]
            for o in range(int(hi - lo))
        }
        assert kept == entered & set(stream[done:]) and (done == 0 or kept)


@pytest.mark.parametrize("world, workers, accum", [(2, 2, 1), (2, 0, 2), (4, 2, 1), (1, 4, 2)])
def test_every_sample_once_and_the_same_batches_on_each_layout_dividing_the_partitions(
    split, tokenizer, world, workers, accum
):
    reference = _global_batches(_cfg(), split, tokenizer, world=1, accum=1)
    keys = [k for b in reference for k in b]
    assert len(keys) == len(set(keys)) == 320  # 320 = 8 partitions x 10 pieces of 4: nothing left over
    assert _global_batches(_cfg(workers=workers), split, tokenizer, world, accum) == reference
    other_seed = _global_batches(_cfg(), split, tokenizer, world=1, accum=1, seed=2)
    assert other_seed != reference and sorted(k for b in other_seed for k in b) == sorted(keys)


def test_a_layout_that_does_not_divide_the_partitions_is_one_clear_error(split, tokenizer):
    assert resolve_partitions(0, world_size=4, grad_accum_steps=2, workers=3) == 48  # lcm(4, 8) x lcm(2, 3)
    assert resolve_partitions(0, world_size=1, grad_accum_steps=1, workers=2) == 16  # 1, 2, 4, 8 ranks: one order
    assert resolve_partitions(0, world_size=24, grad_accum_steps=1, workers=2) == 48
    with pytest.raises(MsaDistError, match="canonical_partitions=8 must be a multiple"):
        build_loader(_cfg(workers=3), str(split), StreamSpec("train", True, 4), tokenizer)
    with pytest.raises(MsaDistError, match="data.resampled=false"):
        build_loader(_cfg(resampled=True), str(split), StreamSpec("train", True, 4), tokenizer)


def _stream_keys(cfg, split, tokenizer, spec, state=None, stop=None) -> tuple[list, dict]:
    stream = TrainStream(cfg, str(split), spec, tokenizer, epochs=1)
    if state is not None:
        stream.load_state_dict(state)
    keys = []
    for batch in stream.epoch(stream.position[0]):
        keys.append(batch["keys"])
        if stop is not None and len(keys) == stop:
            break
    saved = stream.state_dict()
    stream.close()
    return keys, saved


@pytest.mark.parametrize("stop", [1, 7, 13])
def test_a_resumed_stream_gives_exactly_the_rest_of_the_epoch_also_on_another_world_size(split, tokenizer, stop):
    cfg = _cfg(canonical_partitions=4, workers=2)
    whole, _ = _stream_keys(cfg, split, tokenizer, StreamSpec("train", True, 4, seed=3))
    _, state = _stream_keys(cfg, split, tokenizer, StreamSpec("train", True, 4, seed=3), stop=stop)
    rest, _ = _stream_keys(cfg, split, tokenizer, StreamSpec("train", True, 4, seed=3), state=state)
    assert rest == whole[stop:]
    # 2 ranks of batch 4 stopped after `stop` steps, resumed on 1 rank: the rest of the same order
    _, state = _stream_keys(cfg, split, tokenizer, StreamSpec("train", True, 4, 0, 2, seed=3), stop=stop)
    rest, _ = _stream_keys(cfg, split, tokenizer, StreamSpec("train", True, 4, seed=3), state=state)
    assert rest == whole[2 * stop :]
    # another micro batch changes the order: the epoch restarts, with a warning
    with pytest.warns(UserWarning, match="batch_size 4 -> 8"):
        rest, _ = _stream_keys(cfg, split, tokenizer, StreamSpec("train", True, 8, seed=3), state=state)
    assert len(rest) == 40


def test_one_request_per_block_counted_by_the_store(split, tokenizer):
    """memory:// stands for an object store: every index and data read is a counted request."""
    import fsspec

    memory = fsspec.filesystem("memory")
    for path in split.iterdir():
        if path.is_file():
            memory.pipe_file(f"memory://msa-blocks/{path.name}", path.read_bytes())
    requests = {}
    blocks = _cfg(block_bytes=65536, canonical_partitions=2)  # a whole shard per block
    for mode, cfg in (("chunks", _cfg(read_mode="chunks")), ("blocks", blocks)):
        shard_set = ShardSet("memory://msa-blocks")
        before = shard_set.store.requests
        keys = [
            k for b in build_loader(cfg, shard_set, StreamSpec("train", True, 4, seed=1), tokenizer) for k in b["keys"]
        ]
        requests[mode] = (shard_set.store.requests - before) / len(keys)
    entries = ShardSet(str(split)).shards("train")
    table = BlockTable([s["samples"] for s in entries], [s["bytes"] for s in entries], 65536)
    epoch = BlockEpoch(table, 1, 0, 2)
    segments = sum(len(epoch.segments(q)) for q in range(2))
    assert table.blocks == 20 and segments <= 20 + 1  # a block cut by a partition's end: two reads
    assert requests["blocks"] == pytest.approx((segments + 20) / 320)  # + each shard's index, once
    assert requests["blocks"] < requests["chunks"] / 2


def test_each_epoch_reads_every_sample_once_in_its_own_order_across_epoch_boundaries(split, tokenizer):
    """One stream over two epochs, workers going on from one epoch to the next; bytes read once per epoch."""
    shard_set = ShardSet(str(split))
    stream = TrainStream(_cfg(workers=2), shard_set, StreamSpec("train", True, 4, seed=5), tokenizer, epochs=2)
    before = shard_set.store.bytes_read  # the manifest (local indexes are memory-mapped, not read)
    epochs = [[k for b in stream.epoch(e) for k in b["keys"]] for e in range(2)]
    stream.close()
    assert [sorted(e) for e in epochs] == [sorted(epochs[0])] * 2 and len(set(epochs[0])) == 320
    assert epochs[0] != epochs[1]
    indexes = [shard_set.index(s) for s in shard_set.shards("train")]
    sample_bytes = sum(i.ends[k] - i.starts[k] for i in indexes for k in range(len(i)))
    assert shard_set.store.bytes_read - before == 2 * sample_bytes  # each sample's bytes once per epoch


def test_auto_reads_a_split_of_many_shards_in_blocks(split, tokenizer):
    def plan(**kw):
        return build_loader(_cfg(read_mode="auto", **kw), str(split), StreamSpec("train", True, 4), tokenizer).plan

    assert DataConfig().read_mode == "auto"
    assert isinstance(plan(blocks_above_shards=19), BlockTrainPlan)  # 20 shards: more than 19
    assert not isinstance(plan(blocks_above_shards=20), BlockTrainPlan)
    # options only the chunks mode has keep it
    assert not isinstance(plan(blocks_above_shards=19, resampled=True), BlockTrainPlan)
    assert not isinstance(plan(blocks_above_shards=19, length_bucket_batches=2), BlockTrainPlan)


def test_training_resumed_mid_epoch_in_blocks_mode_reproduces_every_loss(split, tmp_path):
    """The trainer's checkpoint carries the blocks-mode position: 2 workers, resumed mid-epoch (mid-buffer)."""
    import shutil

    import torch
    from dist_utils import final_weights, train_losses, write_config

    from msa_dist.config.schema import load_config
    from msa_dist.engine import trainer

    config = write_config(
        tmp_path / "c.yaml", split, "data.workers=2", "data.read_mode=blocks", "data.block_bytes=16384",
        "data.shuffle_buffer_samples=24", "data.canonical_partitions=2", "train.epochs=1",
        "checkpoint.every_steps=10", "checkpoint.keep_last=10",
    )  # fmt: skip
    cfg = load_config(config)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    trainer.train(cfg, whole)
    shutil.copytree(whole, resumed)
    mid = resumed / "checkpoints" / "step-0000010"  # 40 steps of 8: a quarter into each partition's stream
    trainer.train(cfg, resumed, resume=str(mid))
    assert train_losses(resumed) == train_losses(whole) and len(train_losses(whole)) == 40
    a, b = final_weights(whole), final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
