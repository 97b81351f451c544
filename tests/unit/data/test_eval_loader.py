"""Evaluation during training: the val loader's workers are forked once, before the training stream
starts, and every later pass reuses them; no process is forked while training runs (a worker forked
among the training stream's threads can deadlock at start)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os

import pytest
import torch

from msa_dist.config.data_section import DataConfig
from msa_dist.config.schema import Config
from msa_dist.data.loading.loader import EvalLoader, StreamSpec, build_loader
from msa_dist.data.loading.stream import TrainStream
from msa_dist.data.shards import build_shards
from msa_dist.engine.evaluation import split_outputs
from msa_dist.engine.runtime import read_env
from msa_dist.models.tokenizer import train_wordpiece_tokenizer


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from msa_dist.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("evalloader")
    raw = write_synthetic_dataset(root / "raw", n_labelled=80, n_test=0, image_px=24)
    build_shards(raw, root / "shards", val_fraction=0.25, seed=0, shard_size=9)
    return str(root / "shards")


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{**dict(image_size=16, resize_size=20, max_length=12, workers=2), **kw})


def _no_fork(*args, **kwargs):
    raise AssertionError("a process was forked while the training stream ran")


def _pass(loader) -> list[tuple[str, torch.Tensor]]:
    return [(k, img.clone()) for b in loader for k, img in zip(b["keys"], b["images"])]


def test_val_passes_during_training_reuse_workers_forked_before_it(shards, tokenizer, monkeypatch):
    spec = StreamSpec("val", False, 3)
    expected = _pass(build_loader(_cfg(workers=0), shards, spec, tokenizer))
    val = EvalLoader(_cfg(), shards, spec, tokenizer)
    stream = TrainStream(_cfg(), shards, StreamSpec("train", True, 4), tokenizer, epochs=4, batches_per_epoch=3)
    batches = stream.epoch(0)
    next(batches)  # the training stream's workers and queue threads now exist
    workers = {p.pid for p in multiprocessing.active_children()}
    monkeypatch.setattr(os, "fork", _no_fork)
    try:
        for epoch in range(4):
            for _ in batches if epoch == 0 else stream.epoch(epoch):
                pass
            got = _pass(val)
            assert [k for k, _ in got] == [k for k, _ in expected]
            assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, expected))
            next(iter(val))  # a pass left unfinished: the next one still starts from the first batch
        # no new child (a process of an earlier test may have ended meanwhile: a subset, not equality)
        assert {p.pid for p in multiprocessing.active_children()} <= workers
    finally:
        monkeypatch.undo()
        stream.close()
        val.close()
    with pytest.raises(RuntimeError, match="after close"):
        iter(val)


class _Constant(torch.nn.Module):
    def forward(self, input_ids, attention_mask, images):
        return torch.zeros(len(input_ids), 3)


def test_split_outputs_from_an_eval_loader_equal_a_fresh_loaders(shards, tokenizer, monkeypatch):
    cfg = dataclasses.replace(Config(), data=dataclasses.replace(_cfg(), shards=shards))
    env = read_env("cpu")
    fresh = split_outputs(cfg, _Constant(), tokenizer, env, "val", 4)
    val = EvalLoader(cfg.data, shards, StreamSpec("val", False, 4, seed=cfg.train.seed), tokenizer)
    monkeypatch.setattr(os, "fork", _no_fork)
    try:
        for _ in range(2):
            out = split_outputs(cfg, _Constant(), tokenizer, env, "val", 4, loader=val)
            assert out.keys == fresh.keys and torch.equal(out.labels, fresh.labels) and len(out.keys) == 20
    finally:
        monkeypatch.undo()
        val.close()
