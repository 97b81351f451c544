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

import copy
import hashlib
import logging
import multiprocessing
import random
import signal
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import webdataset as wds

from msa_dist.config import DataConfig
from msa_dist.data.images import ImageCropper, as_jpeg, stored_size
from msa_dist.data.manifest import load_manifest, shard_urls
from msa_dist.data.tario import tar_samples

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


def _worker_role(spec: StreamSpec) -> tuple[int, int]:
    """(worker, workers) as the epoch is dealt. A resumed DataLoader starts its round-robin at
    worker 0, but the next batch of the epoch is batch `skip_batches`, which worker
    skip_batches % workers made: rotating the roles keeps the batch order of an uninterrupted run."""
    worker, workers = _worker_info()
    return (worker + spec.skip_batches) % workers, workers


def _epoch_shard_order(seed: int, epoch: int):
    def stage(src):
        urls = list(src)
        random.Random(_stable_int("shards", seed, epoch)).shuffle(urls)
        yield from urls
    return stage


def _resampled_shards(urls: list[str], spec: StreamSpec):
    """Shards drawn with replacement, seeded per (seed, epoch, reader); an endless stream."""
    def source():
        worker, workers = _worker_role(spec)
        rng = random.Random(_stable_int("resample", spec.seed, spec.epoch, spec.rank * workers + worker))
        while True:
            yield {"url": rng.choice(urls)}
    return source


def _deal_blocks(spec: StreamSpec):
    """Keep this reader's blocks of `batch_size` consecutive samples (see the module docstring)."""
    def stage(src):
        worker, workers = _worker_role(spec)
        reader, readers = spec.rank * workers + worker, spec.world_size * workers
        for i, sample in enumerate(src):
            if (i // spec.batch_size) % readers == reader:
                yield sample
    return stage


def _reader_shuffle(bufsize: int, spec: StreamSpec):
    """webdataset's buffer shuffle, seeded per (seed, epoch, reader) once inside the worker."""
    def stage(src):
        worker, workers = _worker_role(spec)
        rng = random.Random(_stable_int("shuffle", spec.seed, spec.epoch, spec.rank * workers + worker))
        return wds.shuffle(bufsize, initial=bufsize, rng=rng)(src)
    return stage


def _skip_samples(spec: StreamSpec):
    """Drop the samples of batches a resumed run already trained on (before any decoding)."""
    def stage(src):
        worker, workers = _worker_role(spec)
        # The DataLoader yields worker batches round-robin: batch g came from worker g % workers.
        done = (spec.skip_batches - worker + workers - 1) // workers if spec.skip_batches > worker else 0
        to_skip = done * spec.batch_size
        for sample in src:
            if to_skip > 0:
                to_skip -= 1
                continue
            yield sample
    return stage


class SampleTransform:
    """Decodes one raw sample into (key, text, uint8 image, label).

    With `decode_on_device` the JPEG bytes and the chosen crop box are kept instead; the device
    decodes and crops them (engine/batch.py), with the same box the CPU would have used.
    """

    def __init__(self, cfg: DataConfig, train: bool, seed: int, epoch: int):
        self.seed, self.epoch = seed, epoch
        self.cropper = ImageCropper(cfg.image_size, cfg.resize_size, train, draft=cfg.image_draft,
                                    train_crop=cfg.train_crop)
        self.decode_on_device = cfg.decode_on_device

    def __call__(self, sample: dict) -> dict:
        key, data = sample["__key__"], sample["jpg"]
        width, height = stored_size(data)
        # A private RNG per sample: the crop depends on (seed, epoch, key) only, and the global
        # RNGs are left alone (workers=0 runs in the training process).
        random_crop = self.cropper.crop != "center"
        rng = random.Random(_stable_int("augment", self.seed, self.epoch, key)) if random_crop else None
        box = self.cropper.box(rng, width, height)
        label = int(sample["cls"]) if "cls" in sample else -1
        out = {"key": key, "text": sample["txt"].decode("utf-8"), "label": label}
        if self.decode_on_device:
            out.update(jpeg=as_jpeg(data), box=box)
        else:
            out["image"] = self.cropper(data, box, width, height)
        return out


class Collate:
    """Batches samples: one fast-tokenizer call per batch, padded to the batch's longest text
    (or to max_length with `pad_to_max_length`, the seed's fixed shapes)."""

    def __init__(self, tokenizer, max_length: int, pad_to_max_length: bool = False, image_size: int = 0):
        self.tokenizer, self.max_length, self.image_size = tokenizer, max_length, image_size
        self.padding = "max_length" if pad_to_max_length else "longest"
        self._backend = _batch_encoder(tokenizer, max_length, pad_to_max_length)

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._backend is not None:
            # the Rust tokenizer directly: half the cost of the Python wrapper's __call__
            encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)  # no offsets
            encodings = encode(texts)
            return (torch.tensor([e.ids for e in encodings], dtype=torch.long),
                    torch.tensor([e.attention_mask for e in encodings], dtype=torch.long))
        enc = self.tokenizer(texts, padding=self.padding, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def __call__(self, samples: list[dict]) -> dict:
        input_ids, attention_mask = self._encode([s["text"] for s in samples])
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.tensor([s["label"] for s in samples], dtype=torch.long),
            "keys": [s["key"] for s in samples],
        }
        if "image" in samples[0]:
            # uint8 [B, 3, S, S] in channels_last memory (stacked as HWC, no transpose here);
            # normalised (and made contiguous) on the device
            batch["images"] = _stack_images([s["image"] for s in samples])
        else:  # data.decode_on_device: JPEG bytes and crop boxes, decoded by engine/batch.py
            # one flat byte tensor + offsets: a worker hands over one shared-memory block, not B
            sizes = torch.tensor([0] + [len(s["jpeg"]) for s in samples], dtype=torch.long)
            flat = bytearray(b"".join(s["jpeg"] for s in samples))
            batch["jpeg_bytes"] = torch.frombuffer(flat, dtype=torch.uint8)
            batch["jpeg_offsets"] = sizes.cumsum(0)
            batch["crop_boxes"] = torch.tensor([s["box"].as_list() for s in samples], dtype=torch.long)
            batch["image_size"] = self.image_size
        return batch


def _stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """[3, S, S] HWC-memory images -> one [B, 3, S, S] channels_last batch. In a loader worker the
    batch is stacked straight into shared memory, as torch's default_collate does, so handing it
    to the training process copies nothing more."""
    hwc = [image.permute(1, 2, 0) for image in images]
    out = None
    if torch.utils.data.get_worker_info() is not None:
        numel = len(hwc) * hwc[0].numel()
        out = hwc[0].new(hwc[0].untyped_storage()._new_shared(numel)).view(len(hwc), *hwc[0].shape)
    return torch.stack(hwc, out=out).permute(0, 3, 1, 2)


def _batch_encoder(tokenizer, max_length: int, pad_to_max_length: bool):
    """A Hugging Face fast tokenizer's Rust backend, set to truncate and pad as __call__ would
    (special tokens added, right padding with the pad token); None for other tokenizers."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or tokenizer.pad_token_id is None or tokenizer.padding_side != "right" \
            or tokenizer.truncation_side != "right":
        return None
    backend = copy.deepcopy(backend)  # the tokenizer's own settings stay untouched
    # room for the special tokens inside max_length, as __call__(truncation=True) leaves
    backend.enable_truncation(max_length)
    backend.enable_padding(pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token,
                           length=max_length if pad_to_max_length else None)
    return backend


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
        # may drop shards first. (tar_samples: webdataset's samples with cheap header parsing.)
        tar_samples(handler=counter),
        _deal_blocks(spec) if not (spec.train and cfg.resampled) else None,
    ]
    if spec.train and cfg.shuffle_buffer > 1:
        stages.append(_reader_shuffle(cfg.shuffle_buffer, spec))
    if spec.skip_batches:
        stages.append(_skip_samples(spec))
    stages += [
        wds.map(SampleTransform(cfg, spec.train, spec.seed, spec.epoch), handler=counter),
        wds.batched(spec.batch_size, partial=not spec.train,
                    collation_fn=Collate(tokenizer, cfg.max_length, cfg.pad_to_max_length, cfg.image_size)),
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


SIGTERM_GRACE_S = 30  # SLURM's default KillWait: it sends SIGKILL this long after SIGTERM


def _defer_sigterm(signum, frame) -> None:
    if not signal.getitimer(signal.ITIMER_REAL)[0]:
        signal.alarm(SIGTERM_GRACE_S)  # SIGALRM ends the worker, should its parent never stop it


def _worker_init(worker_id: int) -> None:
    # SLURM and torchrun send SIGTERM to the whole process group: a worker keeps serving batches
    # while the training process reaches its next step boundary and saves a checkpoint.
    signal.signal(signal.SIGTERM, _defer_sigterm)


def build_loader(cfg: DataConfig, shard_dir: str, spec: StreamSpec, tokenizer,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over `build_pipeline`; batches are already formed by the pipeline."""
    pipeline = build_pipeline(cfg, shard_dir, spec, tokenizer)
    loader = torch.utils.data.DataLoader(
        pipeline, batch_size=None, num_workers=cfg.workers,
        pin_memory=pin_memory and cfg.pin_memory,
        persistent_workers=False,  # a new loader each epoch carries the epoch into the workers
        prefetch_factor=4 if cfg.workers > 0 else None,
        worker_init_fn=_worker_init,
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
