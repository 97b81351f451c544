"""`msa-dist bench data`: samples per second that the training loader delivers, per worker core.

The loader is the trainer's (`TrainStream`, epoch after epoch): ranged shard reads (local or from
a URL), per-sample decode + augmentation, batched tokenization, collation; with W workers the rate
is divided by W (W = 0 runs in this process, on one thread). The first batches (worker start-up)
are warm-up and not timed; epoch boundaries are, as training pays them too. `bytes_read_per_sample`
is what the shard reads cost per delivered sample (batches the workers prefetched but were not yet
delivered count too: a percent or so), beside the split's mean sample size in its shards;
`requests_per_sample` counts the reads (requests to a remote store) the same way;
`bytes_per_sample_read` divides by the samples read instead (the read-ahead's too): what a sample
costs once read, whatever the run's length.
`time_to_first_batch_s` is from opening the shard set (manifest, indexes, a tokenizer trained on the
shard texts) to the first batch; `first_batch_s` is its last part, from the stream's start.
"""

from __future__ import annotations

import dataclasses
import os
import time
from contextlib import closing

import torch

from msa_dist.bench.build import bench_tokenizer
from msa_dist.bench.seed_loader import seed_style_samples_per_s
from msa_dist.common.errors import MsaDistError
from msa_dist.common.urls import redact_url
from msa_dist.config.schema import Config
from msa_dist.data.loading.loader import StreamSpec
from msa_dist.data.loading.reader import ShardSet
from msa_dist.data.loading.stream import TrainStream


def run_data_bench(
    cfg: Config,
    split: str = "train",
    seconds: float = 20.0,
    workers: int = 1,
    warmup_batches: int = 2,
    reference: str | None = None,
) -> dict:
    """Time the training loader of `cfg.data` on `split`; optionally the seed-style reference too."""
    if seconds <= 0 or workers < 0:
        raise MsaDistError("bench data: --seconds must be > 0 and --workers >= 0")
    # One core per reader: HF tokenizers would otherwise spread a batch over every core.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    opened = time.perf_counter()
    shard_dir = cfg.data.shards
    shard_set = ShardSet(shard_dir)
    manifest = shard_set.manifest
    if shard_set.samples(split) < cfg.train.batch_size:
        raise MsaDistError(f"bench data: split '{split}' holds fewer samples than one batch ({cfg.train.batch_size})")
    data_cfg = dataclasses.replace(cfg.data, workers=workers)
    tokenizer = bench_tokenizer(cfg, shard_dir)
    startup_s = time.perf_counter() - opened  # manifest, indexes, the tokenizer (its texts, if trained here)
    if reference:
        # Half of the reference's time before the loader's, half after: on a shared machine both
        # then see about the same load.
        before = seed_style_samples_per_s(reference, seconds / 2)
    threads = torch.get_num_threads()
    if workers == 0:
        torch.set_num_threads(1)
    try:
        timing = _time_loader(
            data_cfg, shard_set, split, cfg.train.batch_size, cfg.train.seed, tokenizer, seconds, warmup_batches
        )
    finally:
        torch.set_num_threads(threads)
    result = {
        "bench": "data",
        "split": split,
        "workers": workers,
        "batch_size": cfg.train.batch_size,
        "image_size": cfg.data.image_size,
        "shard_image_size": manifest.get("options", {}).get("image_size", 0),
        "decode_on_device": cfg.data.decode_on_device,
        "pad_to_max_length": cfg.data.pad_to_max_length,
        "shards": redact_url(shard_dir),
        "cpu_count": os.cpu_count(),
        **timing,
        "startup_s": startup_s,
        "time_to_first_batch_s": startup_s + timing["first_batch_s"],
        "mean_sample_bytes": _mean_sample_bytes(shard_set, split),
        "samples_per_s_per_worker": timing["samples_per_s"] / max(workers, 1),
    }
    if reference:
        result["reference_samples_per_s"] = (before + seed_style_samples_per_s(reference, seconds / 2)) / 2
        result["ratio_to_reference"] = result["samples_per_s_per_worker"] / result["reference_samples_per_s"]
    return result


def _mean_sample_bytes(shard_set: ShardSet, split: str) -> float:
    """A sample's bytes in its shard (tar headers, members, padding), from the indexes of at most
    ~32 shards spread over the split (all of a small split; a bounded read of a large one)."""
    shards = shard_set.shards(split)
    indexes = [shard_set.index(shard) for shard in shards[:: max(1, len(shards) // 16)]]
    return sum(int((i.records["end"] - i.records["start"]).sum()) for i in indexes) / sum(map(len, indexes))


def _time_loader(
    data_cfg,
    shard_set: ShardSet,
    split: str,
    batch_size: int,
    seed: int,
    tokenizer,
    seconds: float,
    warmup_batches: int,
) -> dict:
    pin = torch.cuda.is_available()  # as the trainer: pinned batches only when a GPU will take them
    start = time.perf_counter()
    first_batch_s = timed_from = None
    samples = batches = delivered = 0
    with closing(
        TrainStream(data_cfg, shard_set, StreamSpec(split, True, batch_size, seed=seed), tokenizer, pin_memory=pin)
    ) as stream:
        bytes_before = shard_set.store.bytes_read  # after the manifest and the indexes
        requests_before, read_before = shard_set.store.requests, stream.reader.samples_read
        for batch in stream.batches():
            delivered += len(batch["keys"])
            now = time.perf_counter()
            if first_batch_s is None:
                first_batch_s = now - start
            batches += 1
            if batches == max(1, warmup_batches):  # the clock starts after this batch
                timed_from = now
                continue
            if timed_from is None:
                continue
            samples += len(batch["keys"])
            if now - timed_from >= seconds:
                elapsed = now - timed_from
                return {
                    "samples": samples,
                    "seconds": elapsed,
                    "samples_per_s": samples / elapsed,
                    "first_batch_s": first_batch_s,
                    "epochs": batches / stream.batches_per_epoch,
                    "bytes_read_per_sample": (shard_set.store.bytes_read - bytes_before) / delivered,
                    "requests_per_sample": (shard_set.store.requests - requests_before) / delivered,
                    "bytes_per_sample_read": (shard_set.store.bytes_read - bytes_before)
                    / max(1, stream.reader.samples_read - read_before),
                }
    raise AssertionError("an endless stream ended")
