"""The `data` section of the config: where the shards are and how they are read."""

from __future__ import annotations

from dataclasses import dataclass

from msa_dist.config.checks import check_section


@dataclass
class DataConfig:
    # shard set written by `msa-dist shards build` (holds manifest.json): a folder, file://, http(s):// or fsspec URL
    shards: str = "shards"
    image_size: int = 224  # side of the square crop fed to the image encoder, in pixels
    resize_size: int = 224  # eval: shorter side is resized to this before the center crop (the seed: 224)
    max_length: int = 128  # text tokens per sample at most; batches pad to their longest sample
    workers: int = 2  # DataLoader worker processes per rank
    # train order: runs of this many consecutive samples of the split stay together (one request; two where a run
    # crosses a shard boundary); the runs are shuffled per epoch by a keyed permutation computed on demand. Larger:
    # fewer requests, less mixing
    chunk_samples: int = 4
    resampled: bool = False  # draw the runs with replacement instead of reading each once per epoch
    # train reads: chunks (a ranged read per chunk_samples run) | blocks (a read per block_bytes of a shard, mixed in a
    # shuffle buffer: docs/data-scale.md) | auto (blocks past blocks_above_shards shards, unless resampled or buckets)
    read_mode: str = "auto"
    blocks_above_shards: int = 1000  # read_mode=auto: a train split of more shards than this is read in blocks
    block_bytes: int = 4 << 20  # blocks mode: bytes of one block (one ranged read); a shard is cut into equal blocks
    shuffle_buffer_samples: int = 4096  # blocks mode: samples in each partition's shuffle buffer (per worker)
    # blocks mode: the order's partitions, the same for layouts whose world x lcm(accum, workers) divides it
    # (0: lcm(world, 8) x lcm(accum, workers): 1, 2, 4 and 8 ranks share one order and resume each other exactly)
    canonical_partitions: int = 0
    block_read_ahead: int = 2  # blocks mode: blocks of a partition read ahead of its shuffle buffer
    # ranged reads each loader worker keeps in flight (threads, each with its own connection): hides a remote store's
    # per-request latency
    read_threads: int = 32
    # batches a loader worker plans (and coalesces) together; up to twice this many are being read ahead
    read_ahead_batches: int = 4
    # read-ahead merges runs of one shard into one request when at most this many bytes lie between them
    read_gap_bytes: int = 4096
    pin_memory: bool = True  # page-locked host batches for faster copies to a GPU
    image_draft: bool = True  # decode JPEGs at a reduced DCT scale (1/2, 1/4, 1/8) when they are much larger
    # random (image_size crop at resize_size scale: no resize on shards stored at resize_size, the default) |
    # random_resized (area 50-100%, then resized: the loader resizes every image) | center (no augmentation); each
    # with a random flip except center
    train_crop: str = "random"
    # pad every batch to max_length (the seed's fixed shapes) instead of its longest text
    pad_to_max_length: bool = False
    # round each batch's text length up to a multiple of this (fewer shapes for compile / cuDNN plans); 1 = off
    pad_to_multiple_of: int = 1
    decode_on_device: bool = False  # ship JPEG bytes + crop boxes; decode and crop on the GPU (nvJPEG)
    # training: regroup each rank's batches, this many at a time, by text length (less padding, less random batches;
    # data/loading/buckets.py); 0 or 1 = off
    length_bucket_batches: int = 0
    # validation, `evaluate`, CV scoring and `cv --predict` (not `predict` on raw files): average each sample's
    # logits over its image and the mirrored image (horizontal-flip test-time augmentation; a second forward pass)
    eval_hflip: bool = False

    def __post_init__(self):
        check_section(self, "data")
