"""From raw samples to a batch: decode and augment each image into its slot, tokenize the texts.

A batch lives in one block of memory (`BatchMemory`: shared memory in a loader worker), so that
handing it to the training process costs one file descriptor; a worker reuses its blocks
(`BlockPool`) once the training process has let go of them.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import numpy as np
import torch

from msa_dist.common.labels import NUM_CLASSES
from msa_dist.common.limits import MAX_IMAGE_BYTES, cut_text
from msa_dist.config.data_section import DataConfig
from msa_dist.data.loading.images import ImageCropper, as_jpeg, stored_size
from msa_dist.data.loading.order import stable_int

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_label(raw: bytes, key: str) -> int:
    """A `cls` member: a class index 0..NUM_CLASSES-1; ValueError (a counted skip) for anything else."""
    text = raw.strip()
    if not (text.isdigit() and len(text) <= 3 and int(text) < NUM_CLASSES):
        raise ValueError(f"sample {key}: invalid label cls={raw[:20]!r} (expected 0..{NUM_CLASSES - 1})")
    return int(text)


class SampleTransform:
    """Decodes one raw sample into (key, text, label) and its uint8 image, written into `out`.

    With `decode_on_device` the JPEG bytes and the chosen crop box are kept instead; the device
    decodes and crops them (engine/batch.py), with the same box the CPU would have used.
    """

    def __init__(self, cfg: DataConfig, train: bool, seed: int, epoch: int):
        self.seed, self.epoch = seed, epoch
        self.cropper = ImageCropper(
            cfg.image_size, cfg.resize_size, train, draft=cfg.image_draft, train_crop=cfg.train_crop
        )
        self.decode_on_device = cfg.decode_on_device
        self.max_length = cfg.max_length

    def __call__(self, sample: dict, out: torch.Tensor | None = None) -> dict:
        """`out`: where the image goes (uint8 [S, S, 3], a slot of the batch; allocated when None)."""
        key, data = sample["__key__"], sample["jpg"]
        if len(data) > MAX_IMAGE_BYTES:
            raise ValueError(f"sample {key}: image of {len(data)} bytes, more than the {MAX_IMAGE_BYTES} allowed")
        width, height = stored_size(data)
        # A private RNG per sample: the crop depends on (seed, epoch, key) only, and the global
        # RNGs are left alone (workers=0 runs in the training process).
        random_crop = self.cropper.crop != "center"
        rng = random.Random(stable_int("augment", self.seed, self.epoch, key)) if random_crop else None
        box = self.cropper.box(rng, width, height)
        label = parse_label(sample["cls"], key) if "cls" in sample else -1
        # cut before decoding: a 50 MB text costs no more than the max_length tokens it can give
        result = {"key": key, "text": cut_text(sample["txt"], self.max_length), "label": label}
        if self.decode_on_device:
            result.update(jpeg=as_jpeg(data), box=box)
        else:
            result["image"] = self.cropper(data, box, width, height, out)
        return result


class Collate:
    """Batches samples: one fast-tokenizer call per batch, padded to the batch's longest text
    (or to max_length with `pad_to_max_length`, the seed's fixed shapes)."""

    def __init__(
        self,
        tokenizer,
        max_length: int,
        pad_to_max_length: bool = False,
        image_size: int = 0,
        pad_to_multiple_of: int = 1,
    ):
        self.tokenizer, self.max_length, self.image_size = tokenizer, max_length, image_size
        self.padding = "max_length" if pad_to_max_length else "longest"
        self.multiple = None if pad_to_max_length or pad_to_multiple_of <= 1 else pad_to_multiple_of
        self._backend = _batch_encoder(tokenizer, max_length, pad_to_max_length, self.multiple)

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._backend is not None:
            # the Rust tokenizer directly: half the cost of the Python wrapper's __call__
            encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)  # no offsets
            encodings = encode(texts)
            # through numpy: a third of torch.tensor's cost on nested lists
            return (
                torch.from_numpy(np.array([e.ids for e in encodings], dtype=np.int64)),
                torch.from_numpy(np.array([e.attention_mask for e in encodings], dtype=np.int64)),
            )
        enc = self.tokenizer(
            texts,
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            pad_to_multiple_of=self.multiple,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]

    def __call__(self, samples: list[dict], memory: BatchMemory | None = None) -> dict:
        """`memory`: the batch's block, with the samples' images already in it (BatchMaker writes
        them there); the token ids, mask and labels are put in it too. Without it, the images
        are stacked from the samples."""
        input_ids, attention_mask = self._encode([s["text"] for s in samples])
        labels = torch.tensor([s["label"] for s in samples], dtype=torch.long)
        if memory is not None:
            input_ids, attention_mask, labels = memory.hold(input_ids, attention_mask, labels)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "keys": [s["key"] for s in samples],
        }
        if "image" in samples[0]:
            if memory is not None:
                images = memory.images[: len(samples)]
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
        self.images = (
            torch.empty(0, dtype=torch.uint8).set_(storage, 0, (batch_size, image_size, image_size, 3))
            if image_size
            else None
        )
        self._ints = torch.empty(0, dtype=torch.long).set_(storage, offset, (numel,))

    def hold(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The int64 tensors, copied into the block (unchanged if they do not fit)."""
        if sum(t.numel() for t in tensors) > self._ints.numel():
            return tensors
        views, start = [], 0
        for t in tensors:
            view = self._ints[start : start + t.numel()].view(t.shape)
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


class BatchMaker:
    """Decodes a micro batch's raw samples straight into their slots of one BatchMemory block and
    collates them. A sample that fails goes to `handler` (which counts it) and the batch is that
    much smaller; with a `pool` the blocks are reused."""

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer,
        batch_size: int,
        train: bool,
        seed: int,
        handler: Callable[[Exception], bool],
        pool: BlockPool | None = None,
    ):
        self.cfg, self.train, self.seed = cfg, train, seed
        self.collate = Collate(tokenizer, cfg.max_length, cfg.pad_to_max_length, cfg.image_size, cfg.pad_to_multiple_of)
        self.batch_size, self.handler, self.pool = batch_size, handler, pool
        self._transform: SampleTransform | None = None

    def _transform_for(self, epoch: int) -> SampleTransform:
        if self._transform is None or self._transform.epoch != epoch:
            self._transform = SampleTransform(self.cfg, self.train, self.seed, epoch)
        return self._transform

    def _new_memory(self) -> BatchMemory:
        image_size = 0 if self.cfg.decode_on_device else self.cfg.image_size
        return BatchMemory(self.batch_size, image_size, self.cfg.max_length)

    def make(self, raws: list, epoch: int) -> dict | None:
        """The batch of `raws` (samples or the exceptions that stood for them); None if none decoded."""
        transform = self._transform_for(epoch)
        memory, index = self.pool.take(self._new_memory) if self.pool is not None else (self._new_memory(), -1)
        samples: list[dict] = []
        for raw in raws:
            try:
                if isinstance(raw, Exception):
                    raise raw
                samples.append(transform(raw, None if memory.images is None else memory.images[len(samples)]))
            except Exception as exc:
                if not self.handler(exc):
                    raise
        if not samples:
            if self.pool is not None:
                self.pool.give_back(index)
            return None
        batch = self.collate(samples, memory)
        if index >= 0:
            batch["block"] = (self.pool.worker, index)
        return batch


def _batch_encoder(tokenizer, max_length: int, pad_to_max_length: bool, multiple: int | None = None):
    """A Hugging Face fast tokenizer's Rust backend, set to truncate and pad as __call__ would
    (special tokens added, right padding with the pad token); None for other tokenizers."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (
        backend is None
        or tokenizer.pad_token_id is None
        or tokenizer.padding_side != "right"
        or tokenizer.truncation_side != "right"
    ):
        return None
    backend = copy.deepcopy(backend)  # the tokenizer's own settings stay untouched
    # room for the special tokens inside max_length, as __call__(truncation=True) leaves
    backend.enable_truncation(max_length)
    backend.enable_padding(
        pad_id=tokenizer.pad_token_id,
        pad_token=tokenizer.pad_token,
        length=max_length if pad_to_max_length else None,
        pad_to_multiple_of=multiple,
    )
    return backend


def normalize_images(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B,3,H,W] -> ImageNet-normalised float, on whatever device the batch is on."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=dtype).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=dtype).view(1, 3, 1, 1) * 255
    return (images.to(dtype) - mean) / std
