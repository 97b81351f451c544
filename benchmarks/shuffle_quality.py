"""How well each train read mode mixes a split: chunks vs blocks + shuffle buffer, and webdataset and
MosaicML Streaming at the same buffer memory, on sample ids alone.

    python benchmarks/shuffle_quality.py [--shards 256] [--shard-samples 500] [--sample-bytes 16384]
        [--chunks 4,64] [--block-bytes 2097152] [--buffers 1024,4096,16384] [--workers 4] [--partitions 4]
        [--batch-size 32] [--seeds 0,1,2] [--shardshuffle 100] [--streaming UNZIPPED_WHEEL]
        [--streaming-algos py1e,py1br] [--json out.json]

No data and no training: the epoch orders are the loader's own (order.py's `EpochOrder` for chunks;
blocks.py's block epoch, shuffle_buffer.py's buffers and the micro batch layout for blocks), webdataset's
and Streaming's own code (shuffle_others.py), evaluated on ids of a synthetic split of equal shards, one
rank with `--workers` DataLoader workers. Equal memory: each buffer size k is per loader worker: msa-dist
blocks with one partition per worker (partitions = workers) and buffer k, webdataset's `.shuffle(k)` in
each worker, Streaming's `shuffle_block_size` = k x workers (the node's shuffle window, whose shards its
cache holds). For each mode, averaged over the seeds (epoch 0):
- same_shard_pairs: of the pairs of samples within one micro batch, the fraction from one shard
  (a perfect shuffle: about 1 / shards);
- same_block_pairs: the same for one block of `--block-bytes` (chunks: for a run of back-to-back samples of
  that size, so both modes are compared on the same unit);
- rank_corr: Spearman's correlation between a sample's place in the split (shard order) and its place
  in the epoch (a perfect shuffle: about 0, within 1 / sqrt(N));
- requests_per_sample: data reads (chunks: a run of back-to-back samples of one shard per micro batch,
  before read-ahead merges neighbours; blocks: one per segment).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msa_dist.data.loading.blocks import BlockEpoch, BlockTable
from msa_dist.data.loading.order import EpochOrder
from msa_dist.data.loading.shuffle_buffer import ShuffleBuffer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shuffle_others import load_streaming, streaming_order, webdataset_order


def blocks_order(table: BlockTable, buffer: int, partitions: int, batch: int, seed: int) -> tuple[np.ndarray, int]:
    """The epoch's ids in the global micro batch order (micro batch g: piece g // P of partition g % P),
    whole rounds only, and the data requests (segments)."""
    epoch = BlockEpoch(table, seed, 0, partitions)
    streams, requests = [], 0
    for q in range(partitions):
        segments = epoch.segments(q)
        requests += len(segments)
        streams.append(np.array([i for i, _ in ShuffleBuffer(segments, buffer, seed, 0, q).take(table.size)]))
    pieces = min(len(s) for s in streams) // batch
    rounds = [s[: pieces * batch].reshape(pieces, batch) for s in streams]
    return np.stack(rounds, axis=1).reshape(-1), requests  # round u: piece u of partition 0, 1, ...


def runs_per_sample(order: np.ndarray, shard_samples: int, batch: int) -> float:
    """Ranged reads of the chunks mode: runs of back-to-back ids of one shard within each micro batch."""
    ids = np.sort(order[: len(order) // batch * batch].reshape(-1, batch), axis=1)
    breaks = (np.diff(ids, axis=1) != 1) | (np.diff(ids // shard_samples, axis=1) != 0)
    return float(len(ids) + breaks.sum()) / ids.size


def pair_fraction(groups: np.ndarray, batch: int) -> float:
    """Of the pairs within each micro batch of `groups` (a group label per sample in epoch order), the
    fraction with one label."""
    labels = groups[: len(groups) // batch * batch].reshape(-1, batch)
    same = 0
    for row in labels:
        counts = np.unique(row, return_counts=True)[1]
        same += int((counts * (counts - 1) // 2).sum())
    return same / (len(labels) * batch * (batch - 1) / 2)


def rank_corr(order: np.ndarray) -> float:
    """Spearman's rho between ids (their place in the split) and their place in the epoch."""
    ranks = np.argsort(np.argsort(order))  # ids need not be all of 0..N-1 (blocks: whole rounds)
    return float(np.corrcoef(ranks, np.arange(len(order)))[0, 1])


def measure(order: np.ndarray, shard_samples: int, block_samples: int, batch: int) -> dict:
    return {
        "same_shard_pairs": pair_fraction(order // shard_samples, batch),
        "same_block_pairs": pair_fraction(order // block_samples, batch),
        "rank_corr": rank_corr(order),
        "samples": len(order),
    }


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=256)
    p.add_argument("--shard-samples", type=int, default=500)
    p.add_argument("--sample-bytes", type=int, default=16384)
    p.add_argument("--chunks", default="4,64", help="data.chunk_samples values")
    p.add_argument("--block-bytes", type=int, default=2 << 20)
    p.add_argument("--buffers", default="1024,4096,16384", help="buffer samples per loader worker")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers (one rank)")
    p.add_argument("--partitions", type=int, default=0, help="data.canonical_partitions (0: one per worker)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--shardshuffle", type=int, default=100, help="webdataset's shard shuffle buffer (True = 100)")
    p.add_argument("--streaming", default=None, help="an unzipped mosaicml-streaming wheel (none: no Streaming rows)")
    p.add_argument("--streaming-algos", default="py1e,py1br")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def _configs(args) -> list[tuple[str, int]]:
    buffers = [int(b) for b in args.buffers.split(",")]
    configs = [("chunks", int(c)) for c in args.chunks.split(",")]
    configs += [("blocks", b) for b in buffers] + [("webdataset", b) for b in buffers]
    if args.streaming:
        configs += [(algo, b) for algo in args.streaming_algos.split(",") for b in buffers]
    return configs


def _order(mode: str, value: int, args, table: BlockTable, streaming, seed: int) -> tuple[np.ndarray, float]:
    """(the epoch's ids in batch order, data requests per sample) of one mode and seed."""
    n, batch, samples = args.shard_samples, args.batch_size, args.shards * args.shard_samples
    if mode == "chunks":
        order = EpochOrder(samples, value, seed, 0).ids(0, samples)
        return order, runs_per_sample(order, n, batch)
    if mode == "blocks":
        partitions = args.partitions or args.workers
        order, segments = blocks_order(table, value * args.workers // partitions, partitions, batch, seed)
        return order, segments / samples
    if mode == "webdataset":  # one request per shard
        return webdataset_order(args.shards, n, args.workers, batch, value, args.shardshuffle, seed), 1 / n
    order = streaming_order(streaming, args.shards, n, args.workers, batch, value * args.workers, mode, seed)
    return order, 1 / n  # Streaming downloads whole shards


def main(argv=None) -> list[dict]:
    args = _args(argv)
    samples, n, batch = args.shards * args.shard_samples, args.shard_samples, args.batch_size
    table = BlockTable([n] * args.shards, [n * args.sample_bytes + 1024] * args.shards, args.block_bytes)
    block_samples = int(table.block_samples.max())
    streaming = load_streaming(args.streaming) if args.streaming else None
    rows = []
    for mode, value in _configs(args):
        got = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            order, requests = _order(mode, value, args, table, streaming, seed)
            got.append({**measure(order, n, block_samples, batch), "requests_per_sample": requests})
        row = {"mode": mode, "chunk_samples" if mode == "chunks" else "buffer_samples_per_worker": value}
        row.update({k: float(np.mean([g[k] for g in got])) for k in got[0]})
        row["buffer_mib_per_worker"] = 0.0 if mode == "chunks" else value * args.sample_bytes / 2**20
        rows.append(row)
        label = f"{mode} {'C' if mode == 'chunks' else 'buffer'}={value}"
        print(
            f"{label:<22} same-shard pairs {row['same_shard_pairs']:.4f}  same-block pairs "
            f"{row['same_block_pairs']:.4f}  rank corr {row['rank_corr']:+.4f}  requests/sample "
            f"{row['requests_per_sample']:.4f}",
            flush=True,
        )
    print(
        f"split: {samples:,} samples in {args.shards} shards of {n}; blocks of {args.block_bytes / 2**20:g} MiB "
        f"({block_samples} samples); {args.workers} workers, {args.partitions or args.workers} partitions; micro "
        f"batch {batch}; seeds {args.seeds}; a perfect shuffle: same-shard pairs ~{1 / args.shards:.4f}, "
        f"same-block ~{block_samples / samples:.4f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
