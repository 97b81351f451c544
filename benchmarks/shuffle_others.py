"""The epoch orders of webdataset and MosaicML Streaming on sample ids, for benchmarks/shuffle_quality.py.

Both are their own code run on ids, not re-implementations:
- webdataset (the installed package): `WebDataset(urls, shardshuffle=S).shuffle(k)` on W DataLoader
  workers: each worker takes shards w, w + W, ... (its `split_by_worker`), shuffles that list with
  `filters._shuffle(bufsize=S)` (shardshuffle=True means S = 100), reads its shards one after another
  and passes their samples through `filters._shuffle(bufsize=k, initial=100)`; the DataLoader yields
  worker 0's first batch, worker 1's, ... round robin.
- Streaming (mosaicml-streaming's `streaming/base/shuffle` and `streaming/base/partition` packages,
  loaded from an unpacked wheel: `pip download --no-deps mosaicml-streaming` then unzip; they need numpy
  alone, so the rest of the package, its torch and cloud dependencies, is not imported): the ids of
  `generate_work_random_batching` for one node, one rank, W workers: `get_partitions('orig', ...)` then
  `get_shuffle(algo, shard_sizes, num_canonical_nodes, seed, epoch, block_size)` applied to them, and
  the DataLoader's round robin over the workers' batches.
"""

from __future__ import annotations

import importlib
import itertools
import sys
import types
from pathlib import Path

import numpy as np


def webdataset_order(
    shards: int, shard_samples: int, workers: int, batch: int, buffer: int, shardshuffle: int, seed: int
) -> np.ndarray:
    """The epoch's ids as webdataset's DataLoader yields them (whole batches of every worker's stream)."""
    from webdataset.filters import _shuffle

    streams = []
    for w in range(workers):
        mine = list(range(shards))[w::workers]
        order = list(_shuffle(iter(mine), bufsize=shardshuffle, initial=100, seed=seed * 1000 + w))
        ids = itertools.chain.from_iterable(range(s * shard_samples, (s + 1) * shard_samples) for s in order)
        streams.append(np.fromiter(_shuffle(ids, bufsize=buffer, initial=100, seed=seed * 1000 + 500 + w), np.int64))
    return _round_robin(streams, batch)


def _round_robin(streams: list[np.ndarray], batch: int) -> np.ndarray:
    """The DataLoader's order: batch i of worker 0, 1, ..., then batch i + 1 (whole rounds only)."""
    pieces = min(len(s) for s in streams) // batch
    return np.stack([s[: pieces * batch].reshape(pieces, batch) for s in streams], axis=1).reshape(-1)


def load_streaming(root: str | Path) -> tuple:
    """`get_shuffle` and `get_partitions` from an unpacked mosaicml-streaming wheel at `root`."""
    root = Path(root)
    if not (root / "streaming" / "base" / "shuffle" / "py1e.py").is_file():
        raise SystemExit(f"{root}: no streaming/base/shuffle/py1e.py (unzip the mosaicml-streaming wheel there)")
    for name in ("streaming", "streaming.base"):  # bare packages: their __init__ would import torch and more
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*name.split(".")))]
            sys.modules[name] = package
    shuffle = importlib.import_module("streaming.base.shuffle")
    partition = importlib.import_module("streaming.base.partition")
    return shuffle.get_shuffle, partition.get_partitions


def streaming_order(
    streaming, shards: int, shard_samples: int, workers: int, batch: int, block: int, algo: str, seed: int
) -> np.ndarray:
    """The epoch's ids as Streaming's DataLoader yields them on one node and rank (num_canonical_nodes = 1,
    its default for py1e / py1br on one node)."""
    get_shuffle, get_partitions = streaming
    total = shards * shard_samples
    ids = get_partitions("orig", total, 1, 1, 1, workers, batch)[0, 0]  # (workers, batches, batch)
    shuffle = get_shuffle(algo, np.full(shards, shard_samples, np.int64), 1, seed, 0, block)
    ids = np.where(ids != -1, shuffle[np.maximum(ids, 0)], -1)
    streams = [row.reshape(-1)[row.reshape(-1) != -1] for row in ids]
    return _round_robin(streams, batch)
