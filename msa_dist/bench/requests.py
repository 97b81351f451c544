"""`msa-dist bench requests`: the requests one epoch of blocks-mode reading makes, counted by an HTTP
server, beside what the planner (plan_blocks.py) predicts for the same split and layout.

The shard folder is served over HTTP on 127.0.0.1 (stores/serve.py's Range server, in a thread) by a
handler that counts each GET as data (a tar), index (a sidecar) or other (the manifest, the range check).
Then, for every rank of a world of `world` ranks and every one of its `workers` loader workers, the
loader's own read path runs one epoch: the rank opens the shard set and reads the indexes it reads
before its workers fork (all of them when they fit the index cache), and each worker, holding a copy
of those, reads its partitions' blocks (block_reads.py), nothing decoded. The plan: one request per
segment of each worker's partitions, plus the indexes read before the fork (per rank), plus, when they
were not all read then, one per distinct shard a worker meets.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections import Counter

from msa_dist.bench.plan_blocks import epoch_reads
from msa_dist.config.data_section import DataConfig
from msa_dist.data.format.index_bin import IndexCache, shards_to_preload
from msa_dist.data.format.shard_table import shard_column
from msa_dist.data.loading.block_reads import BlockReads
from msa_dist.data.loading.blocks import BlockEpoch, BlockTable, block_train_plan, resolve_partitions
from msa_dist.data.loading.loader import StreamSpec
from msa_dist.data.loading.reader import SampleReader, ShardSet
from msa_dist.data.stores.serve import RangeHandler, serving


def counting_handler() -> tuple[type, Counter]:
    """A Range handler class counting its GETs by kind, and the counter it adds to."""
    counts: Counter = Counter()
    lock = threading.Lock()

    class Counting(RangeHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            kind = "index" if ".idx." in path else "data" if path.endswith(".tar") else "other"
            with lock:
                counts[kind] += 1
            super().do_GET()

    return Counting, counts


def _worker_view(shard_set: ShardSet) -> ShardSet:
    """What a forked loader worker holds: the same store, a copy of the indexes read so far."""
    view = copy.copy(shard_set)
    view.__setstate__({})  # its own locks
    view._indexes = IndexCache(shard_set._indexes.max_bytes)
    for name, index in shard_set._indexes.items():
        view._indexes[name] = index
    return view


def _open(location: str, cache_bytes: int | None) -> ShardSet:
    shard_set = ShardSet(location)
    if cache_bytes is not None:  # a smaller index cache stands for a split whose indexes do not fit it
        shard_set._indexes = IndexCache(cache_bytes)
    return shard_set


def read_epoch(location: str, cfg: DataConfig, world: int, batch_size: int, seed: int = 0, cache_bytes=None) -> int:
    """Every rank's and loader worker's reads of epoch 0 of the train split in blocks mode; the samples read."""
    workers, samples, split = max(1, cfg.workers), 0, "train"
    for rank in range(world):
        shard_set = _open(location, cache_bytes)
        reader = SampleReader(shard_set, split)
        shard_set.preload(shards_to_preload(shard_set, reader.shards))
        spec = StreamSpec(split, True, batch_size, rank=rank, world_size=world, seed=seed)
        plan = block_train_plan(cfg, reader.shards, spec, end_epoch=1)
        for worker in range(workers):
            reads = BlockReads(SampleReader(_worker_view(shard_set), split), plan, cfg.read_threads)
            samples += sum(len(raw) for _, raw in reads(worker, workers))
    return samples


def planned(shards: list[dict], cfg: DataConfig, world: int, preloaded: bool, seed: int = 0) -> dict:
    """The plan's requests for one epoch of every rank (accumulation 1)."""
    table = BlockTable(shard_column(shards, "samples"), shard_column(shards, "bytes"), cfg.block_bytes)
    partitions = resolve_partitions(cfg.canonical_partitions, world, 1, cfg.workers)
    reads = epoch_reads(BlockEpoch(table, seed, 0, partitions), world, cfg.workers)
    # the indexes read before the workers fork (all, or the first: the workers then hold it), and without
    # those, each segment's records (one ranged read; the manifest says where they lie), or for a manifest
    # without that, the distinct shards each worker meets (one whose cache drops one reads it again: uncounted)
    if preloaded:
        index = world * len(shards)
    elif all(isinstance(s.get("index"), dict) for s in shards):
        index = world + reads["segments"] - reads["segments_of_first"]
    else:
        index = world + reads["shard_visits"] - reads["workers_meeting_first"]
    return {"data": reads["segments"], "index": index, "samples": reads["samples"], "partitions": partitions}


def uniform_plan(shards: list[dict], cfg: DataConfig, world: int, batch_size: int, preloaded: bool) -> dict:
    """`msa-dist bench plan --read-mode blocks` for this layout (one node of `world` GPUs), from the split's
    sample count, mean shard samples and mean sample bytes: its requests for one epoch."""
    from msa_dist.bench.plan import run_plan_bench

    samples = int(shard_column(shards, "samples").sum())
    sample_bytes = max(1, round(int(shard_column(shards, "bytes").sum()) / samples))
    blocks = {"block_bytes": cfg.block_bytes, "buffer_samples": cfg.shuffle_buffer_samples}
    blocks["partitions"] = cfg.canonical_partitions
    result = run_plan_bench(
        samples, round(samples / len(shards)), 1, world, cfg.workers, 0.0, 1.0, batch_size=batch_size,
        sample_bytes=sample_bytes, manifest=False, blocks=blocks,
    )  # fmt: skip
    # the indexes read before the workers fork (all, or the first), and without those a ranged read per
    # segment (or, for a manifest that does not say where the records lie, one per shard a worker meets)
    ranged = all(isinstance(s.get("index"), dict) for s in shards)
    per_sample = result["requests_per_sample"] if ranged else result["shard_visits_per_sample"]
    visits = 0.0 if preloaded else per_sample * samples
    per_epoch = {
        "data": result["requests_per_sample"] * samples,
        "index": visits + world * (len(shards) if preloaded else 1),
    }
    return {**per_epoch, "shard_samples": round(samples / len(shards)), "sample_bytes": sample_bytes}


def run_requests_bench(
    location: str, cfg: DataConfig, world: int, batch_size: int, seed: int = 0, cache_bytes: int | None = None
) -> dict:
    """Counted and planned requests of one epoch over HTTP (`location`: a local shard folder)."""
    cfg = dataclasses.replace(cfg, read_mode="blocks")
    handler, counts = counting_handler()
    with serving(location, handler=handler) as url:
        shard_set = _open(url, cache_bytes)
        shards = shard_set.shards("train")
        preloaded = len(shards_to_preload(shard_set, shards)) == len(shards)
        counts.clear()
        samples = read_epoch(url, cfg, world, batch_size, seed, cache_bytes)
    plan = planned(shards, cfg, world, preloaded, seed)
    return {
        "bench": "requests",
        "shards": len(shards),
        "world": world,
        "workers": cfg.workers,
        "block_bytes": cfg.block_bytes,
        "partitions": plan["partitions"],
        "samples_read": samples,
        "counted": {"data": counts["data"], "index": counts["index"], "other": counts["other"]},
        "planned": {"data": plan["data"], "index": plan["index"], "samples": plan["samples"]},
        "indexes_preloaded": preloaded,
        "bench_plan": uniform_plan(shards, cfg, world, batch_size, preloaded),
    }


def print_requests(result: dict, console) -> None:
    counted, plan, uniform = result["counted"], result["planned"], result["bench_plan"]
    console.print(
        f"{result['shards']} train shards, {result['world']} ranks x {result['workers']} workers, blocks of "
        f"{result['block_bytes']:,} bytes, {result['partitions']} canonical partitions; one epoch, "
        f"{result['samples_read']:,} samples read (indexes read before the workers fork: "
        f"{'all' if result['indexes_preloaded'] else 'the first'})",
        highlight=False,
    )
    for kind in ("data", "index"):
        console.print(
            f"{kind:>5} requests: counted {counted[kind]:,}, planned on the split's shards {plan[kind]:,}, "
            f"bench plan ({uniform['shard_samples']} samples of {uniform['sample_bytes']:,} bytes per shard) "
            f"{uniform[kind]:,.0f} ({uniform[kind] / max(1, counted[kind]) - 1:+.1%})",
            highlight=False,
        )
    total, total_plan = counted["data"] + counted["index"], uniform["data"] + uniform["index"]
    console.print(
        f"total: counted {total:,} ({total / max(1, result['samples_read']):.4f} per sample), bench plan "
        f"{total_plan:,.0f} ({total_plan / total - 1:+.1%}); other requests (manifest, range check): "
        f"{counted['other']}",
        highlight=False,
    )
