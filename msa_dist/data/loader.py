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
import dataclasses
import hashlib
import itertools
import logging
import multiprocessing
import random
import signal
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch
import webdataset as wds
from torch.multiprocessing.reductions import StorageWeakRef

from msa_dist.config import DataConfig
from msa_dist.data.images import ImageCropper, as_jpeg, stored_size
from msa_dist.data.manifest import load_manifest, shard_urls
from msa_dist.data.tario import tar_samples
from msa_dist.errors import MsaDistError

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
    worker_shift: int = 0  # DataLoader worker w reads as worker (w + worker_shift) % workers (resume)


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
    skip_batches % workers made: shifting the roles by that much (`worker_shift`, which TrainStream
    keeps for the later epochs too) keeps the batch order of an uninterrupted run."""
    worker, workers = _worker_info()
    return (worker + spec.worker_shift) % workers, workers


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


def _batches_done(skip_batches: int, role: int, workers: int) -> int:
    """How many of the first `skip_batches` batches of an epoch reader role `role` made: batch g is
    made by role g % workers (the DataLoader takes worker batches round-robin)."""
    return max(0, -(-(skip_batches - role) // workers))


def _skip_samples(spec: StreamSpec):
    """Drop the samples of batches a resumed run already trained on (before any decoding)."""
    def stage(src):
        worker, workers = _worker_role(spec)
        to_skip = _batches_done(spec.skip_batches, worker, workers) * spec.batch_size
        for sample in src:
            if to_skip > 0:
                to_skip -= 1
                continue
            yield sample
    return stage


class SampleTransform:
    """Decodes one raw sample into (key, text, label) and its uint8 image, written into `out`.

    With `decode_on_device` the JPEG bytes and the chosen crop box are kept instead; the device
    decodes and crops them (engine/batch.py), with the same box the CPU would have used.
    """

    def __init__(self, cfg: DataConfig, train: bool, seed: int, epoch: int):
        self.seed, self.epoch = seed, epoch
        self.cropper = ImageCropper(cfg.image_size, cfg.resize_size, train, draft=cfg.image_draft,
                                    train_crop=cfg.train_crop)
        self.decode_on_device = cfg.decode_on_device

    def __call__(self, sample: dict, out: Optional[torch.Tensor] = None) -> dict:
        """`out`: where the image goes (uint8 [S, S, 3], a slot of the batch; allocated when None)."""
        key, data = sample["__key__"], sample["jpg"]
        width, height = stored_size(data)
        # A private RNG per sample: the crop depends on (seed, epoch, key) only, and the global
        # RNGs are left alone (workers=0 runs in the training process).
        random_crop = self.cropper.crop != "center"
        rng = random.Random(_stable_int("augment", self.seed, self.epoch, key)) if random_crop else None
        box = self.cropper.box(rng, width, height)
        label = int(sample["cls"]) if "cls" in sample else -1
        result = {"key": key, "text": sample["txt"].decode("utf-8"), "label": label}
        if self.decode_on_device:
            result.update(jpeg=as_jpeg(data), box=box)
        else:
            result["image"] = self.cropper(data, box, width, height, out)
        return result


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
            # through numpy: a third of torch.tensor's cost on nested lists
            return (torch.from_numpy(np.array([e.ids for e in encodings], dtype=np.int64)),
                    torch.from_numpy(np.array([e.attention_mask for e in encodings], dtype=np.int64)))
        enc = self.tokenizer(texts, padding=self.padding, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def __call__(self, samples: list[dict], memory: Optional[BatchMemory] = None) -> dict:
        """`memory`: the batch's block, with the samples' images already in it (BatchDecoder writes
        them there); the token ids, mask and labels are put in it too. Without it, the images
        are stacked from the samples."""
        input_ids, attention_mask = self._encode([s["text"] for s in samples])
        labels = torch.tensor([s["label"] for s in samples], dtype=torch.long)
        if memory is not None:
            input_ids, attention_mask, labels = memory.hold(input_ids, attention_mask, labels)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                 "keys": [s["key"] for s in samples]}
        if "image" in samples[0]:
            if memory is not None:
                images = memory.images[:len(samples)]
            else:
                images = torch.stack([s["image"].permute(1, 2, 0) for s in samples])
            # uint8 [B, 3, S, S] in channels_last memory (the HWC batch, no transpose here);
            # normalised (and made contiguous) on the device
            batch["images"] = images.permute(0, 3, 1, 2)
        else:  # data.decode_on_device: JPEG bytes and crop boxes, decoded by engine/batch.py
            # one flat byte tensor + offsets: a worker hands over one shared-memory block, not B
            sizes = torch.tensor([0] + [len(s["jpeg"]) for s in samples], dtype=torch.long)
            flat = bytearray(b"".join(s["jpeg"] for s in samples))
            batch["jpeg_bytes"] = torch.frombuffer(flat, dtype=torch.uint8)
            batch["jpeg_offsets"] = sizes.cumsum(0)
            batch["crop_boxes"] = torch.tensor([s["box"].as_list() for s in samples], dtype=torch.long)
            batch["image_size"] = self.image_size
        return batch


class BatchMemory:
    """One block of memory for one batch: uint8 images [B, S, S, 3] (none when the device decodes),
    then room for the int64 token ids and mask [B, max_length] and labels [B].

    In a loader worker the block is shared memory. Handing a batch to the training process then
    costs one shared-memory file and one file-descriptor transfer (tensors viewing one storage
    are sent as one), where a tensor each costs one each: about 1.2 ms per batch of 32 here.
    """

    def __init__(self, batch_size: int, image_size: int, max_length: int):
        image_bytes = batch_size * image_size * image_size * 3
        offset = -(-image_bytes // 8)  # the ints start 8-byte aligned, in int64 elements
        numel = batch_size * (2 * max_length + 1)
        nbytes = 8 * (offset + numel)
        shared = torch.utils.data.get_worker_info() is not None
        storage = torch.UntypedStorage._new_shared(nbytes) if shared else torch.UntypedStorage(nbytes)
        self.images = (torch.empty(0, dtype=torch.uint8).set_(storage, 0, (batch_size, image_size, image_size, 3))
                       if image_size else None)
        self._ints = torch.empty(0, dtype=torch.long).set_(storage, offset, (numel,))

    def hold(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The int64 tensors, copied into the block (unchanged if they do not fit)."""
        if sum(t.numel() for t in tensors) > self._ints.numel():
            return tensors
        views, start = [], 0
        for t in tensors:
            view = self._ints[start:start + t.numel()].view(t.shape)
            views.append(view.copy_(t))
            start += t.numel()
        return tuple(views)


class BlockPool:
    """A loader worker's BatchMemory blocks, reused once the training process has let go of them.

    A fresh shared-memory block per batch costs its creation and a page fault on every 4 KiB of
    it (about 1.7 ms per batch of 32 at 224 px here, a tenth of the worker's time). TrainStream
    watches the blocks it hands out and sets `released[i]` when no tensor of block i is left
    in the training process; only then is block i written again. Batches are tagged
    ("block": (worker, i)) so that TrainStream knows which flag to set.
    """

    def __init__(self, released: torch.Tensor, worker: int):
        self.released, self.worker = released, worker
        self.blocks: list[BatchMemory] = []

    def take(self, new_block: Callable[[], BatchMemory]) -> tuple[BatchMemory, int]:
        """A free block and its index; -1 (a fresh block, not kept) when every pooled one is out."""
        for i, block in enumerate(self.blocks):
            if self.released[i]:
                self.released[i] = 0
                return block, i
        if len(self.blocks) < len(self.released):
            self.blocks.append(new_block())
            return self.blocks[-1], len(self.blocks) - 1
        return new_block(), -1

    def give_back(self, index: int) -> None:
        """A block taken but never handed over (its stream ended first)."""
        if index >= 0:
            self.released[index] = 1


class BatchDecoder:
    """The pipeline's last stage: decodes raw samples straight into their slots of the batch and
    collates each full batch (webdataset's map + batched, less one copy of every image).

    The batch lives in one BatchMemory block (shared memory in a loader worker, as torch's
    default_collate would put it), so handing it to the training process copies nothing more;
    with a `pool` the blocks are reused. A sample that fails goes to `handler` (which counts
    it), and the next sample takes its slot.
    """

    def __init__(self, transform: SampleTransform, collate: Collate, batch_size: int, partial: bool,
                 handler: Callable[[Exception], bool], pool: Optional[BlockPool] = None):
        self.transform, self.collate, self.handler = transform, collate, handler
        self.batch_size, self.partial, self.pool = batch_size, partial, pool

    def _new_memory(self) -> BatchMemory:
        image_size = 0 if self.transform.decode_on_device else self.transform.cropper.image_size
        return BatchMemory(self.batch_size, image_size, self.collate.max_length)

    def _take(self) -> tuple[BatchMemory, int]:
        return self.pool.take(self._new_memory) if self.pool is not None else (self._new_memory(), -1)

    def _collate(self, samples: list[dict], memory: BatchMemory, index: int) -> dict:
        batch = self.collate(samples, memory)
        if index >= 0:
            batch["block"] = (self.pool.worker, index)
        return batch

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        samples: list[dict] = []
        memory, index = None, -1
        try:
            for raw in src:
                if memory is None:
                    memory, index = self._take()
                try:
                    sample = self.transform(raw, None if memory.images is None else memory.images[len(samples)])
                except Exception as exc:  # noqa: BLE001 - the handler decides, as in webdataset's map
                    if self.handler(exc):
                        continue
                    raise
                samples.append(sample)
                if len(samples) == self.batch_size:
                    batch, samples, memory = self._collate(samples, memory, index), [], None
                    yield batch
            if samples and self.partial:
                batch, memory = self._collate(samples, memory, index), None
                yield batch
        finally:
            if memory is not None and self.pool is not None:
                self.pool.give_back(index)


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
                   counter: Optional[CorruptCounter] = None, pool: Optional[BlockPool] = None) -> wds.DataPipeline:
    """The WebDataset pipeline for one rank's part of one epoch of one split (batch memory from
    `pool` when given, see BlockPool)."""
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
        BatchDecoder(SampleTransform(cfg, spec.train, spec.seed, spec.epoch),
                     Collate(tokenizer, cfg.max_length, cfg.pad_to_max_length, cfg.image_size),
                     spec.batch_size, partial=not spec.train, handler=counter, pool=pool),
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
    """A DataLoader over `build_pipeline` (one pass; batches are already formed by the pipeline).
    Started at `skip_batches`, its worker 0 delivers batch skip_batches: the roles shift by that."""
    spec = dataclasses.replace(spec, worker_shift=spec.skip_batches)
    return _data_loader(build_pipeline(cfg, shard_dir, spec, tokenizer), cfg, pin_memory and cfg.pin_memory)


def _data_loader(dataset, cfg: DataConfig, pinned: bool) -> torch.utils.data.DataLoader:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=cfg.workers, pin_memory=pinned,
        prefetch_factor=4 if cfg.workers > 0 else None,
        worker_init_fn=_worker_init,
    )
    loader.corrupt = dataset.corrupt
    return loader


class _Epochs(torch.utils.data.IterableDataset):
    """One reader's batches of epochs first.epoch, first.epoch + 1, ... (up to `end`), each tagged
    with its epoch: exactly the reader's share of the epoch's `batches_per_epoch`, then straight on."""

    def __init__(self, cfg: DataConfig, shard_dir: str, first: StreamSpec, tokenizer,
                 batches_per_epoch: int, end: Optional[int], released: Optional[torch.Tensor]):
        self.cfg, self.shard_dir, self.first, self.tokenizer = cfg, shard_dir, first, tokenizer
        self.batches_per_epoch, self.end = batches_per_epoch, end
        self.released = released  # [workers, blocks] flags in shared memory, or None: no BlockPool
        self.corrupt = CorruptCounter()

    def __iter__(self) -> Iterator[dict]:
        worker, _ = _worker_info()
        pool = BlockPool(self.released[worker], worker) if self.released is not None else None
        epoch = self.first.epoch
        while self.end is None or epoch < self.end:
            n = epoch - self.first.epoch
            # Batch g of an epoch is always made by reader role g % workers (as by a fresh loader
            # per epoch); the DataLoader's round-robin runs on across epochs, so the worker that
            # delivers it shifts by the batches delivered before the epoch.
            spec = dataclasses.replace(self.first, epoch=epoch, skip_batches=0 if n else self.first.skip_batches,
                                       worker_shift=self.first.skip_batches - n * self.batches_per_epoch)
            role, workers = _worker_role(spec)
            # this reader's batches of the epoch: role, role + workers, ..., past those already done
            start = role + _batches_done(spec.skip_batches, role, workers) * workers
            share = len(range(start, self.batches_per_epoch, workers))
            pipeline = build_pipeline(self.cfg, self.shard_dir, spec, self.tokenizer, self.corrupt, pool)
            for batch in itertools.islice(pipeline, share):
                batch["epoch"] = epoch
                yield batch
            epoch += 1


class TrainStream:
    """One rank's training batches, epoch after epoch, from a single DataLoader.

    Its workers never restart: each yields its share of an epoch's batches and goes straight on
    to the next epoch, so an epoch boundary costs neither worker start-up nor a cold pipeline.
    Unless batches are pinned, the workers also reuse their batches' shared memory (BlockPool)
    once no tensor of a batch is left in this process. `first` is where the run starts (its epoch
    and, on resume, the batches of it already consumed); `epochs` is where it ends (None: never);
    an epoch has `batches_per_epoch` batches (default: batches_per_rank, the same count on every
    rank). Close it to stop the workers.
    """

    BLOCKS_PER_WORKER = 8  # > the DataLoader's prefetch (4) + the batch in use + the one being made

    def __init__(self, cfg: DataConfig, shard_dir: str, first: StreamSpec, tokenizer, pin_memory: bool = False,
                 epochs: Optional[int] = None, batches_per_epoch: Optional[int] = None):
        self.first, self.shard_dir, self.end = first, shard_dir, epochs
        full = batches_per_rank(split_size(shard_dir, first.split), first, cfg.workers)
        self.batches_per_epoch = full if batches_per_epoch is None else min(batches_per_epoch, full)
        if self.batches_per_epoch == 0:
            raise MsaDistError(f"split '{first.split}' gives no full batch of {first.batch_size} to each of "
                               f"{max(cfg.workers, 1)} workers x {first.world_size} ranks: lower the batch size "
                               "or data.workers")
        pinned = pin_memory and cfg.pin_memory
        # Pinned batches are copies made by the DataLoader's pin thread, which drops the shared
        # memory unseen here; device-decoded batches have no image block: no pool for those.
        pooled = cfg.workers > 0 and not pinned and not cfg.decode_on_device
        self._released = (torch.zeros(cfg.workers, self.BLOCKS_PER_WORKER, dtype=torch.uint8).share_memory_()
                          if pooled else None)
        dataset = _Epochs(cfg, shard_dir, first, tokenizer, self.batches_per_epoch, epochs, self._released)
        self.loader = _data_loader(dataset, cfg, pinned)
        self._out: list[tuple[StorageWeakRef, int, int]] = []  # pooled blocks handed out: (storage, worker, index)
        self._batches: Optional[Iterator[dict]] = None

    def epoch(self, epoch: int) -> Iterator[dict]:
        """The batches of `epoch` still to train on (all of them, or those after the resume point).
        A batch's tensors stay valid for as long as they are referenced."""
        if self._batches is None:
            # Starting a DataLoader draws a seed from the global RNG; fork it so that a resumed
            # run draws the same dropout masks as an uninterrupted one.
            with torch.random.fork_rng(devices=[]):
                self._batches = iter(self.loader)
        done = self.first.skip_batches if epoch == self.first.epoch else 0
        for got in range(done, self.batches_per_epoch):
            self._release_blocks()
            batch = next(self._batches, None)
            if batch is None or batch.pop("epoch") != epoch:
                self.close()
                raise MsaDistError(
                    f"rank {self.first.rank} ran out of training data after {got} of {self.batches_per_epoch} "
                    f"batches in epoch {epoch + 1}: the shards no longer match manifest.json; "
                    f"run `msa-dist shards verify {self.shard_dir}`")
            block = batch.pop("block", None)
            if block is not None:
                self._out.append((StorageWeakRef(batch["images"].untyped_storage()), *block))
            yield batch
            del batch  # the consumer's reference alone decides when the block is free again

    def _release_blocks(self) -> None:
        """Tell the workers which of their blocks no tensor here uses any more."""
        still_out = []
        for storage, worker, index in self._out:
            if storage.expired():
                self._released[worker, index] = 1
            else:
                still_out.append((storage, worker, index))
        self._out = still_out

    def batches(self) -> Iterator[dict]:
        """All batches from the first epoch on, across epoch boundaries (until `epochs`)."""
        epoch = self.first.epoch
        while self.end is None or epoch < self.end:
            yield from self.epoch(epoch)
            epoch += 1

    def close(self) -> None:
        """Stop the workers now: left to interpreter exit, they would be joined after a SIGTERM,
        which they defer (see _worker_init)."""
        self._batches = None


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
