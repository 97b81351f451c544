"""`msa-dist bench plan`: what a split of N samples costs each process and node, with no data.

It builds the loader's real structures at that scale from synthetic sizes: the epoch order
(data/loading/order.py), the sample-id-to-shard table a reader holds (one int64 per shard), binary shard
indexes (data/format/index_bin.py, served from memory by `SyntheticStore`) loaded into one process's
bounded cache as a worker meets them, and optionally the manifest's shard list parsed as JSON.
It measures their memory (resident set, before/after) and build time, then runs the order for one
node over one minute of training to count what that node must fetch: requests (one per run of
back-to-back samples, one per index not in the worker's cache), bytes, and distinct shards.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
import tracemalloc

import numpy as np

from msa_dist.common.errors import MsaDistError
from msa_dist.data.format.index import ShardIndex
from msa_dist.data.format.index_bin import BINARY_SUFFIX, CompactIndex, IndexCache, load_index, to_binary
from msa_dist.data.loading.order import EpochOrder, TrainPlan

FIELDS = ("cls", "jpg", "txt")


def rss_bytes() -> int:
    """This process's resident set now (Linux /proc; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def shard_name(number: int) -> str:
    return f"train-{number:09d}.tar"


class SyntheticStore:
    """Binary indexes of a split of `samples` samples in shards of `shard_samples`, each sample
    `sample_bytes` long (header 512, cls, jpg, txt), made on request; counts requests and bytes."""

    location = "synthetic://"

    def __init__(self, samples: int, shard_samples: int, sample_bytes: int):
        self.samples, self.shard_samples, self.sample_bytes = samples, shard_samples, sample_bytes
        self.requests = self.bytes_read = 0
        n = shard_samples
        starts = [i * sample_bytes for i in range(n)]
        txt = min(200, sample_bytes // 4)
        fields = {
            "cls": [[s + 512, 1] for s in starts],
            "txt": [[s + 1536, txt] for s in starts],
            "jpg": [[s + 2048 + txt + (-txt % 512), sample_bytes - 2560 - txt - (-txt % 512)] for s in starts],
        }
        template = ShardIndex(
            shard_name(0),
            n * sample_bytes + 1024,
            [f"{i:012d}" for i in range(n)],
            starts,
            [s + sample_bytes for s in starts],
            fields,
        )
        data = to_binary(template)
        self._records = CompactIndex.parse(data, "template").records
        self._head = data[: len(data) - self._records.nbytes]

    def shard_sizes(self) -> np.ndarray:
        shards = -(-self.samples // self.shard_samples)
        sizes = np.full(shards, self.shard_samples, dtype=np.int64)
        sizes[-1] = self.samples - (shards - 1) * self.shard_samples
        return sizes

    def read(self, name: str, limit: int | None = None) -> bytes:  # synthetic: far below any limit
        if not name.endswith(BINARY_SUFFIX):
            raise MsaDistError(f"{name}: the synthetic store serves binary indexes only")
        number = int(name.split("-")[1].split(".")[0])
        records = self._records.copy()  # a fresh buffer per shard, as a real read makes
        records["key"] = (number * self.shard_samples + np.arange(len(records))).astype(records.dtype["key"])
        data = self._head + records.tobytes()
        self.requests += 1
        self.bytes_read += len(data)
        return data

    def url(self, name: str) -> str:
        return self.location + name


def process_structures(
    samples: int,
    shard_samples: int,
    chunk_samples: int = 4,
    sample_bytes: int = 16384,
    cache_bytes: int | None = None,
    seed: int = 0,
) -> dict:
    """Build one loader process's order, shard table and (filled) index cache at this scale;
    their resident memory and build times. Run it in a fresh process for a clean measurement."""
    store = SyntheticStore(samples, shard_samples, sample_bytes)
    rss0, peak0 = rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    order = EpochOrder(samples, chunk_samples, seed, epoch=0)
    t_order = time.perf_counter() - t0
    first_id = np.concatenate([[0], np.cumsum(store.shard_sizes())])  # what SampleReader holds
    t_table = time.perf_counter() - t0 - t_order
    cache = IndexCache() if cache_bytes is None else IndexCache(cache_bytes)
    position, t1 = 0, time.perf_counter()
    while not cache.full() and position < samples:  # the shards the epoch's first samples lie in
        ids = order.ids(position, min(position + 4096, samples))
        for shard in np.unique(np.searchsorted(first_id, ids, side="right") - 1).tolist():
            if cache.get(shard_name(shard)) is None and not cache.full():
                cache[shard_name(shard)] = load_index(store, shard_name(shard))
        position += 4096
    t_cache = time.perf_counter() - t1
    return {
        "samples": samples,
        "shards": len(first_id) - 1,
        "order_s": t_order,
        "shard_table_s": t_table,
        "index_cache_fill_s": t_cache,
        "index_loads": store.requests,
        "index_bytes": store.bytes_read,
        "cached_indexes": len(cache),
        "cache_bytes": cache.held_bytes,
        "cache_limit_bytes": cache.max_bytes,
        "index_record_bytes": int(store._records.dtype.itemsize),
        "shard_table_bytes": int(first_id.nbytes),
        "rss_bytes": rss_bytes() - rss0,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak0,
    }


def manifest_cost(shards: int, samples_per_shard: int) -> dict:
    """Parse a manifest listing `shards` shards (no guids): the start-up step every process repeats."""
    entry = {"name": "", "samples": samples_per_shard, "bytes": 0, "sha256": "0" * 64}
    text = json.dumps(
        {
            "format": 1,
            "splits": {
                "train": {
                    "samples": shards * samples_per_shard,
                    "shards": [
                        {**entry, "name": shard_name(i), "bytes": samples_per_shard * 16384} for i in range(shards)
                    ],
                }
            },
        }
    )
    t0 = time.perf_counter()
    json.loads(text)
    seconds = time.perf_counter() - t0
    tracemalloc.start()  # Python objects alone: exact, where a resident-set difference is blurred by frees
    manifest = json.loads(text)  # held while measured
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del manifest
    return {"manifest_json_bytes": len(text), "manifest_parse_s": seconds, "manifest_python_bytes": held}


def node_minute(
    samples: int,
    shard_samples: int,
    chunk_samples: int,
    gpus: int,
    nodes: int,
    batch_size: int,
    samples_per_s_per_gpu: float,
    seed: int = 0,
) -> dict:
    """Node 0's reads over one minute of training: ids of its ranks' micro batches from the real
    order (ranks 0..gpus-1 hold one contiguous slice of each micro round); requests = runs of
    back-to-back samples of one shard per micro batch (what a worker asks for, before coalescing)."""
    plan = TrainPlan(samples, chunk_samples, False, seed, batch_size, 1, 0, nodes * gpus)
    per_minute = max(1, round(samples_per_s_per_gpu * 60 / batch_size))
    batches = min(per_minute, plan.batches_per_epoch)
    if batches == 0:
        raise MsaDistError(f"bench plan: {samples} samples hold no global batch of {batch_size} x {nodes * gpus} ranks")
    order = plan.order(0)
    ids = np.concatenate(
        [order.ids(b * plan.round_samples, b * plan.round_samples + gpus * batch_size) for b in range(batches)]
    ).reshape(-1, batch_size)
    ids_sorted = np.sort(ids, axis=1)
    shards_sorted = ids_sorted // shard_samples  # shards of equal size: the table's lookup as a division
    new_shard = np.diff(shards_sorted, axis=1) != 0
    runs = int(len(ids) + ((np.diff(ids_sorted, axis=1) != 1) | new_shard).sum())
    scale = per_minute / batches  # an epoch shorter than a minute: rates from what it holds
    return {
        "batches_per_rank_per_minute": per_minute,
        "samples_per_minute": int(ids.size * scale),
        "requests_per_sample": runs / ids.size,
        "shard_visits_per_sample": float(len(ids) + new_shard.sum()) / ids.size,
        "shards_per_minute": _shards_per_minute(len(np.unique(shards_sorted)), -(-samples // shard_samples), scale),
        "shards": -(-samples // shard_samples),
    }


def _shards_per_minute(touched: int, shards: int, epochs: float) -> int:
    """Distinct shards a node meets in a minute holding `epochs` >= 1 epochs' share of what one showed
    (`touched`; orders of different epochs are independent), or `touched` if the minute is within an epoch."""
    if epochs <= 1:
        return touched
    return round(shards * (1 - (1 - touched / shards) ** epochs))


def run_plan_bench(
    samples: int,
    shard_samples: int,
    nodes: int,
    gpus: int,
    workers: int,
    latency_ms: float,
    samples_per_s_per_gpu: float,
    chunk_samples: int = 4,
    batch_size: int = 32,
    sample_bytes: int = 16384,
    read_threads: int = 16,
    manifest: bool = True,
    blocks: dict | None = None,
) -> dict:
    """The whole plan: per-process memory and start-up, and what each node must sustain."""
    if min(samples, shard_samples, nodes, gpus, chunk_samples, batch_size, sample_bytes) < 1 or workers < 0:
        raise MsaDistError("bench plan: sizes and counts must be positive (--workers >= 0)")
    proc = process_structures(samples, shard_samples, chunk_samples, sample_bytes)
    if blocks is not None:  # {block_bytes, buffer_samples, partitions}: the blocks read mode (plan_blocks.py)
        from msa_dist.bench.plan_blocks import node_minute_blocks

        preloaded = proc["cached_indexes"] >= proc["shards"]
        node = node_minute_blocks(
            samples, shard_samples, sample_bytes, gpus=gpus, nodes=nodes, workers=workers, batch_size=batch_size,
            samples_per_s_per_gpu=samples_per_s_per_gpu, indexes_preloaded=preloaded, **blocks,
        )  # fmt: skip
        node["shards_per_minute"] = _shards_per_minute(
            node["shards_touched"], node["shards"], node["epochs_per_minute"]
        )
    else:
        node = node_minute(samples, shard_samples, chunk_samples, gpus, nodes, batch_size, samples_per_s_per_gpu)
        # a shard met by a worker costs an index read unless that worker's cache holds it (a split whose
        # indexes all fit is read once at start-up)
        miss = 0.0 if proc["cached_indexes"] >= proc["shards"] else 1 - proc["cached_indexes"] / proc["shards"]
        node["index_loads_per_sample"] = node["shard_visits_per_sample"] * miss
    result = {
        "bench": "plan",
        "nodes": nodes,
        "gpus_per_node": gpus,
        "workers_per_gpu": workers,
        "latency_ms": latency_ms,
        "samples_per_s_per_gpu": samples_per_s_per_gpu,
        "chunk_samples": chunk_samples,
        "batch_size": batch_size,
        "sample_bytes": sample_bytes,
        **proc,
        **node,
    }
    if manifest:
        result.update(manifest_cost(proc["shards"], shard_samples))
    node_rate = gpus * samples_per_s_per_gpu
    # bytes of one index read: a whole shard's records, or (blocks mode) a segment's alone
    index_bytes = proc["index_record_bytes"] * node.get("index_load_samples", shard_samples)
    result["node_samples_per_s"] = node_rate
    result["node_requests_per_s"] = node_rate * (node["requests_per_sample"] + node["index_loads_per_sample"])
    result["node_bytes_per_s"] = node_rate * (sample_bytes + node["index_loads_per_sample"] * index_bytes)
    result["index_bytes_share"] = node["index_loads_per_sample"] * index_bytes / sample_bytes
    # Little's law: requests a worker must keep in flight to hide the latency
    result["in_flight_per_worker"] = result["node_requests_per_s"] / (gpus * max(workers, 1)) * latency_ms / 1000
    # start-up: the manifest (one request), the indexes read before the workers fork (all if they fit
    # the cache, else one), the first batch's requests; `read_threads` requests in flight
    preload = proc["shards"] if proc["cached_indexes"] >= proc["shards"] else 1
    per_sample = node["requests_per_sample"] + node["shard_visits_per_sample"] * (preload == 1)
    first_batch = math.ceil(batch_size * per_sample)
    first_rounds = math.ceil(first_batch / read_threads)
    if blocks is not None:  # a worker's buffer fills first: blocks read side by side, each index then data
        first_rounds = (1 + (preload == 1)) * math.ceil(node["first_batch_blocks"] / read_threads)
    result["startup_request_rounds"] = 1 + math.ceil(preload / read_threads) + first_rounds
    result["startup_s"] = (
        node.get("block_table_s", 0.0)
        + node.get("epoch_s", 0.0)
        + proc["order_s"]
        + proc["shard_table_s"]
        + result.get("manifest_parse_s", 0.0)
        + preload * proc["index_cache_fill_s"] / max(1, proc["index_loads"])
        + result["startup_request_rounds"] * latency_ms / 1000
    )
    return result


def print_plan(result: dict, console) -> None:
    """The plan as a few lines."""
    mib = 1 << 20
    lines = [
        f"split: {result['samples']:,} samples in {result['shards']:,} shards; {result['nodes']} nodes x "
        f"{result['gpus_per_node']} GPUs x {result['workers_per_gpu']} workers; "
        f"{result['latency_ms']:g} ms per request",
        f"per process: order {result['order_s'] * 1e3:.2f} ms; shard table {result['shard_table_bytes'] / mib:.1f} MiB "
        f"({result['shard_table_s'] * 1e3:.0f} ms); index cache {result['cache_bytes'] / mib:.1f} MiB "
        f"({result['cached_indexes']} indexes of {result['index_record_bytes']} B/sample, limit "
        f"{result['cache_limit_bytes'] / mib:.0f} MiB); resident +{result['rss_bytes'] / mib:.0f} MiB "
        f"(peak +{result['peak_rss_bytes'] / mib:.0f} MiB)",
    ]
    if "manifest_parse_s" in result:
        lines.append(
            f"manifest shard list: {result['manifest_json_bytes'] / mib:.0f} MiB of JSON, parsed in "
            f"{result['manifest_parse_s']:.2f} s into {result['manifest_python_bytes'] / mib:.0f} MiB "
            "of Python objects "
            "(every process; not part of the order or index)"
        )
    lines += [
        f"start-up to the first batch: ~{result['startup_s']:.2f} s (builds and parses measured here, plus "
        f"{result['startup_request_rounds']} rounds of requests at {result['latency_ms']:g} ms, 16 in flight)",
        f"each node sustains: {result['node_samples_per_s']:,.0f} samples/s, {result['node_requests_per_s']:,.0f} "
        f"requests/s ({result['requests_per_sample']:.3f} data + {result['index_loads_per_sample']:.3f} index per "
        f"sample), {result['node_bytes_per_s'] / mib:,.0f} MiB/s (index reads +{result['index_bytes_share']:.1%})",
        f"each worker keeps ~{result['in_flight_per_worker']:.1f} requests in flight; a node touches "
        f"{result['shards_per_minute']:,} shards per minute ({result['shards_per_minute'] / result['shards']:.1%} "
        f"of the split)",
    ]
    if result.get("read_mode") == "blocks":
        from msa_dist.bench.plan_blocks import blocks_lines

        lines += blocks_lines(result)
    for line in lines:
        console.print(line, highlight=False)
