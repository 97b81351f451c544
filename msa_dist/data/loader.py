"""The streaming loader: a WebDataset pipeline from shards to tokenized, batched uint8 images.

How an epoch is divided (the same rule on every rank, so no rank needs to talk to another):
- the split's shard order is shuffled from (seed, epoch), identically everywhere;
- the concatenated sample stream is cut into blocks of `batch_size` samples, dealt round-robin
  to the `world_size * workers` readers (reader = rank * workers + worker). Every reader walks
  the tar headers of every shard but decodes only its own samples, so readers get equal shares
  whatever the shard sizes, and together they read the epoch exactly once;
- each reader shuffles its samples in a buffer seeded by (seed, epoch, reader);
- augmentation is seeded per sample by (seed, epoch, key): a sample looks the same whichever
  rank or worker reads it, so N ranks with batch b see what 1 process with batch N*b sees;
- a resumed epoch skips the batches already consumed, before decoding them (exact resume).
"""
from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import random
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import webdataset as wds
from PIL import Image
from torchvision import transforms

from msa_dist.config import DataConfig
from msa_dist.data.manifest import load_manifest, shard_urls

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class StreamSpec:
    """Which part of which epoch one rank reads."""
    split: str
    train: bool
    batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    epoch: int = 0
    skip_batches: int = 0  # batches of this epoch this rank already consumed (resume)


def _stable_int(*parts) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class CorruptCounter:
    """A webdataset error handler that logs and counts bad samples instead of dying.

    The count lives in shared memory so that worker processes add to the parent's total.
    """

    def __init__(self):
        self._value = multiprocessing.Value("i", 0)

    def __call__(self, exc: Exception) -> bool:
        with self._value.get_lock():
            self._value.value += 1
        log.warning("skipping a corrupt sample: %s", repr(exc)[:200])
        return True  # continue with the next sample

    @property
    def count(self) -> int:
        return self._value.value


def _worker_info() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _epoch_shard_order(seed: int, epoch: int):
    def stage(src):
        urls = list(src)
        random.Random(_stable_int("shards", seed, epoch)).shuffle(urls)
        yield from urls
    return stage


def _resampled_shards(urls: list[str], spec: StreamSpec):
    """Shards drawn with replacement, seeded per (seed, epoch, reader); an endless stream."""
    def source():
        worker, workers = _worker_info()
        rng = random.Random(_stable_int("resample", spec.seed, spec.epoch, spec.rank * workers + worker))
        while True:
            yield {"url": rng.choice(urls)}
    return source


def _deal_blocks(spec: StreamSpec):
    """Keep this reader's blocks of `batch_size` consecutive samples (see the module docstring)."""
    def stage(src):
        worker, workers = _worker_info()
        reader, readers = spec.rank * workers + worker, spec.world_size * workers
        for i, sample in enumerate(src):
            if (i // spec.batch_size) % readers == reader:
                yield sample
    return stage


def _reader_shuffle(bufsize: int, spec: StreamSpec):
    """webdataset's buffer shuffle, seeded per (seed, epoch, reader) once inside the worker."""
    def stage(src):
        worker, workers = _worker_info()
        rng = random.Random(_stable_int("shuffle", spec.seed, spec.epoch, spec.rank * workers + worker))
        return wds.shuffle(bufsize, initial=bufsize, rng=rng)(src)
    return stage


def _skip_samples(spec: StreamSpec):
    """Drop the samples of batches a resumed run already trained on (before any decoding)."""
    def stage(src):
        worker, workers = _worker_info()
        # The DataLoader yields worker batches round-robin: batch g came from worker g % workers.
        done = (spec.skip_batches - worker + workers - 1) // workers if spec.skip_batches > worker else 0
        to_skip = done * spec.batch_size
        for sample in src:
            if to_skip > 0:
                to_skip -= 1
                continue
            yield sample
    return stage


def _decode_image(data: bytes, draft_size: int) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    if draft_size and img.format == "JPEG":
        # Decode at a reduced DCT scale when the JPEG is much larger than needed (still >= size).
        img.draft("RGB", (draft_size, draft_size))
    return img.convert("RGB")


class SampleTransform:
    """Decodes one raw sample into (key, text, uint8 image, label)."""

    def __init__(self, cfg: DataConfig, train: bool, seed: int, epoch: int):
        self.train, self.seed, self.epoch = train, seed, epoch
        self.draft_size = cfg.resize_size if cfg.image_draft else 0
        if train:
            self.image_tf = transforms.Compose([
                transforms.RandomResizedCrop(cfg.image_size, scale=(0.5, 1.0), antialias=True),
                transforms.RandomHorizontalFlip(),
                transforms.PILToTensor(),
            ])
        else:
            self.image_tf = transforms.Compose([
                transforms.Resize(cfg.resize_size, antialias=True),
                transforms.CenterCrop(cfg.image_size),
                transforms.PILToTensor(),
            ])

    def __call__(self, sample: dict) -> dict:
        key = sample["__key__"]
        image = _decode_image(sample["jpg"], self.draft_size)
        if self.train:
            # fork_rng keeps the global RNG untouched (workers=0 runs in the training process).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_stable_int("augment", self.seed, self.epoch, key) % 2**63)
                image = self.image_tf(image)
        else:
            image = self.image_tf(image)
        label = int(sample["cls"]) if "cls" in sample else -1
        return {"key": key, "text": sample["txt"].decode("utf-8"), "image": image, "label": label}


class Collate:
    """Batches samples: one fast-tokenizer call per batch, padded to the batch's longest text."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, samples: list[dict]) -> dict:
        enc = self.tokenizer([s["text"] for s in samples], padding="longest", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "images": torch.stack([s["image"] for s in samples]),  # uint8, normalised on the device
            "labels": torch.tensor([s["label"] for s in samples], dtype=torch.long),
            "keys": [s["key"] for s in samples],
        }


def build_pipeline(cfg: DataConfig, shard_dir: str, spec: StreamSpec, tokenizer,
                   counter: Optional[CorruptCounter] = None) -> wds.DataPipeline:
    """The WebDataset pipeline for one rank's part of one epoch of one split."""
    counter = counter or CorruptCounter()
    urls = shard_urls(shard_dir, spec.split)
    if spec.train and cfg.resampled:
        source = [_resampled_shards(urls, spec)]
    else:
        source = [wds.SimpleShardList(urls), _epoch_shard_order(spec.seed, spec.epoch) if spec.train else None]
    stages = [s for s in source if s is not None]
    stages += [
        # Every reader walks every shard; _deal_blocks keeps its share, so no node/worker splitter
        # may drop shards first.
        wds.tarfile_to_samples(handler=counter),
        _deal_blocks(spec) if not (spec.train and cfg.resampled) else None,
    ]
    if spec.train and cfg.shuffle_buffer > 1:
        stages.append(_reader_shuffle(cfg.shuffle_buffer, spec))
    if spec.skip_batches:
        stages.append(_skip_samples(spec))
    stages += [
        wds.map(SampleTransform(cfg, spec.train, spec.seed, spec.epoch), handler=counter),
        wds.batched(spec.batch_size, collation_fn=Collate(tokenizer, cfg.max_length), partial=not spec.train),
    ]
    pipeline = wds.DataPipeline(*[s for s in stages if s is not None])
    pipeline.corrupt = counter
    return pipeline


def split_size(shard_dir: str, split: str) -> int:
    """Samples in a split, from the manifest."""
    return int(load_manifest(shard_dir)["splits"][split]["samples"])


def batches_per_rank(num_samples: int, spec: StreamSpec, workers: int) -> int:
    """Training batches every rank yields in an epoch: the same number on all ranks.

    Full blocks are dealt round-robin to world_size*workers readers; counting only the rounds
    that give every reader a block keeps ranks equal and each batch full.
    """
    readers = spec.world_size * max(workers, 1)
    full_rounds = (num_samples // spec.batch_size) // readers
    return full_rounds * max(workers, 1)


def build_loader(cfg: DataConfig, shard_dir: str, spec: StreamSpec, tokenizer,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over `build_pipeline`; batches are already formed by the pipeline."""
    pipeline = build_pipeline(cfg, shard_dir, spec, tokenizer)
    loader = torch.utils.data.DataLoader(
        pipeline, batch_size=None, num_workers=cfg.workers,
        pin_memory=pin_memory and cfg.pin_memory,
        persistent_workers=False,  # a new loader each epoch carries the epoch into the workers
        prefetch_factor=4 if cfg.workers > 0 else None,
    )
    loader.corrupt = pipeline.corrupt
    return loader


def iter_texts(shard_dir: str, split: str = "train") -> Iterator[str]:
    """Texts of a split, read straight from the shards (e.g. to train a tokenizer)."""
    pipeline = wds.DataPipeline(wds.SimpleShardList(shard_urls(shard_dir, split)), wds.tarfile_to_samples())
    for sample in pipeline:
        yield sample["txt"].decode("utf-8")


def normalize_images(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B,3,H,W] -> ImageNet-normalised float, on whatever device the batch is on."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=dtype).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=dtype).view(1, 3, 1, 1) * 255
    return (images.to(dtype) - mean) / std
