"""Batches (data/loading/batching.py): the collate's fast tokenizer path and padding, augmentation as a pure
function of (seed, epoch, key), and decoding on the device giving the CPU loader's images."""

from __future__ import annotations

import random

import pytest
import torch

from msa_dist.config.data_section import DataConfig
from msa_dist.data.format.manifest import shard_urls
from msa_dist.data.format.tario import tar_samples
from msa_dist.data.loading.batching import IMAGENET_STD, Collate, SampleTransform
from msa_dist.data.loading.loader import StreamSpec, build_loader, iter_texts
from msa_dist.engine.batch import model_inputs
from msa_dist.models.tokenizer import train_wordpiece_tokenizer


@pytest.fixture
def tokenizer(shard_dir):
    return train_wordpiece_tokenizer(iter_texts(str(shard_dir), "train"), 120)


def test_collate_fast_path_matches_the_tokenizer_call(tokenizer):
    texts = ["a short one", "", "word " * 80, "Mixed CASE, punctuation!! and #tags @user"]
    for max_length, pad in ((8, False), (16, True), (128, False)):
        collate = Collate(tokenizer, max_length, pad)
        assert collate._backend is not None
        ids, mask = collate._encode(texts)
        ref = tokenizer(texts, padding=collate.padding, truncation=True, max_length=max_length, return_tensors="pt")
        assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
        assert ids.shape[1] == (max_length if pad or max_length == 8 else ref["input_ids"].shape[1])


def test_augmentation_is_a_pure_function_of_seed_epoch_key(shard_dir):
    sample = next(iter(tar_samples(handler=lambda exc: False)([{"url": shard_urls(shard_dir, "train")[0]}])))
    cfg = DataConfig(image_size=24, resize_size=32)
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    first = SampleTransform(cfg, True, seed=3, epoch=1)(sample)["image"]
    again = SampleTransform(cfg, True, seed=3, epoch=1)(dict(sample))["image"]
    assert torch.equal(first, again) and first.shape == (3, 24, 24) and first.dtype == torch.uint8
    # the global RNGs are not touched (workers=0 runs in the training process)
    assert random.getstate() == python_state and torch.equal(torch.get_rng_state(), torch_state)
    boxes = {SampleTransform(cfg, True, seed=3, epoch=e).cropper.box(random.Random(e), 48, 40) for e in range(6)}
    assert len(boxes) > 1


def test_collate_pads_to_longest_or_to_max_length(tokenizer):
    samples = [
        {"key": str(i), "text": "word " * (i + 1), "label": 0, "image": torch.zeros(3, 8, 8, dtype=torch.uint8)}
        for i in range(3)
    ]
    longest = Collate(tokenizer, 16)(samples)
    fixed = Collate(tokenizer, 16, pad_to_max_length=True)(samples)
    assert longest["input_ids"].shape[1] < 16 and fixed["input_ids"].shape == (3, 16)
    assert torch.equal(fixed["attention_mask"].sum(1), longest["attention_mask"].sum(1))
    assert longest["images"].shape == (3, 3, 8, 8)
    # data.pad_to_multiple_of: lengths rounded up (fewer shapes), the same tokens; the Python path agrees
    rounded = Collate(tokenizer, 16, pad_to_multiple_of=8)(samples)
    assert rounded["input_ids"].shape[1] % 8 == 0 and rounded["input_ids"].shape[1] >= longest["input_ids"].shape[1]
    width = longest["input_ids"].shape[1]
    assert (
        torch.equal(rounded["input_ids"][:, :width], longest["input_ids"])
        and not rounded["attention_mask"][:, width:].any()
    )
    slow = Collate(tokenizer, 16, pad_to_multiple_of=8)
    slow._backend = None
    assert torch.equal(slow._encode([s["text"] for s in samples])[0], rounded["input_ids"])


@pytest.mark.parametrize("train", [True, False])
def test_decode_on_device_gives_the_cpu_loaders_images(shard_dir, tokenizer, train):
    spec = StreamSpec("train", train, 4, seed=1, epoch=2)
    base = DataConfig(image_size=32, resize_size=40, workers=0)
    on_cpu = next(iter(build_loader(base, str(shard_dir), spec, tokenizer)))
    deferred = next(
        iter(build_loader(DataConfig(**{**base.__dict__, "decode_on_device": True}), str(shard_dir), spec, tokenizer))
    )
    assert "images" not in deferred and deferred["keys"] == on_cpu["keys"]
    a = model_inputs(on_cpu, torch.device("cpu"), "both")["images"]
    b = model_inputs(deferred, torch.device("cpu"), "both")["images"]
    assert a.shape == b.shape == (4, 3, 32, 32) and a.is_contiguous() and a.dtype == torch.float32
    # the same crops of the same pixels: only the JPEG decoders differ (simplejpeg's fast DCT on
    # the loader's side, torchvision's exact one here), by a few intensity levels at most
    levels = ((a - b) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255).abs()
    assert levels.max() <= 8 and levels.mean() < 2.0
    other = ((a.roll(1, 0) - b) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255).abs()
    assert other.mean() > 4 * levels.mean()  # another image would not pass
