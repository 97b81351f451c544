"""`msa-dist bench plan --read-mode blocks`: what the blocks read mode (data/loading/blocks.py) costs a node.

It builds the real block table and epoch (the keyed permutation of blocks, cut into canonical
partitions) at the given scale, takes node 0's partitions (each rank's loader workers own theirs), and
counts their reads: one request per segment (a block, or the part of one a partition holds), one index
read per distinct shard a worker meets (none when every index of the split fits one process's cache:
they are read before the workers fork). Memory and time of the table and of an epoch's build are
measured in this process.
"""

from __future__ import annotations

import math
import time

import numpy as np

from msa_dist.data.loading.blocks import BlockEpoch, BlockTable, resolve_partitions


def node_minute_blocks(
    samples: int,
    shard_samples: int,
    sample_bytes: int,
    block_bytes: int,
    gpus: int,
    nodes: int,
    workers: int,
    batch_size: int,
    samples_per_s_per_gpu: float,
    buffer_samples: int,
    partitions: int = 0,
    indexes_preloaded: bool = False,
    seed: int = 0,
) -> dict:
    """Node 0's reads in blocks mode, per sample, from the real epoch at this scale (accumulation 1)."""
    shards = -(-samples // shard_samples)
    sizes = np.full(shards, shard_samples, dtype=np.int64)
    sizes[-1] = samples - (shards - 1) * shard_samples
    t0 = time.perf_counter()
    table = BlockTable(sizes, sizes * sample_bytes + 1024, block_bytes)  # + the tar's end blocks
    t_table = time.perf_counter() - t0
    world, readers = nodes * gpus, max(1, workers)
    partitions = resolve_partitions(partitions, world, 1, workers)
    t0 = time.perf_counter()
    epoch = BlockEpoch(table, seed, 0, partitions)
    t_epoch = time.perf_counter() - t0
    # the node's share of an epoch, and of it what one minute of training consumes
    node_rate = gpus * samples_per_s_per_gpu
    node_samples = samples * gpus // world
    minute = min(1.0, node_rate * 60 / max(1, node_samples))
    reads = epoch_reads(epoch, world, workers, ranks=range(gpus), minute=minute)
    segments, shard_visits, consumed = reads["segments"], reads["shard_visits"], reads["samples"]
    owned = reads["partitions_per_worker"]
    block_samples = float(table.block_samples.mean())
    fill_blocks = math.ceil(min(buffer_samples, samples // partitions) / block_samples) + 1
    return {
        "read_mode": "blocks",
        "block_bytes": block_bytes,
        "block_samples": block_samples,
        "blocks": table.blocks,
        "partitions": partitions,
        "shuffle_buffer_samples": buffer_samples,
        "block_table_bytes": int(
            sum(a.nbytes for a in (table.samples, table.per_shard, table.first_block, table.first_id))
            + table.block_samples.nbytes
        ),
        "block_table_s": t_table,
        "epoch_bytes": int(epoch._marks.nbytes),
        "epoch_s": t_epoch,
        "requests_per_sample": segments / consumed,
        "shard_visits_per_sample": shard_visits / consumed,
        # a segment's index records alone, one ranged read each (block_reads.py; the manifest says where they lie)
        "index_loads_per_sample": 0.0 if indexes_preloaded else segments / consumed,
        "index_load_samples": 0.0 if indexes_preloaded else consumed / segments,  # records per index read
        "samples_per_minute": int(node_rate * 60),
        "shards_touched": reads[
            "shards_touched"
        ],  # in one minute, or in the node's share of an epoch if that is shorter
        "epochs_per_minute": node_rate * 60 / max(1, node_samples),
        "shards": shards,
        # before its first batch a worker fills its buffer: that many blocks, each an index read then a data read
        "first_batch_blocks": fill_blocks,
        "buffer_bytes_per_worker": (buffer_samples + block_samples) * sample_bytes * owned,
        "block_seconds": block_samples / (node_rate / (gpus * readers)),  # how long one block feeds a worker
    }


def epoch_reads(epoch: BlockEpoch, world: int, workers: int, ranks=None, minute: float = 1.0) -> dict:
    """The reads of one epoch by the loader workers of `ranks` (default: all), accumulation 1: one request
    per segment, and the distinct shards each worker meets (its index reads when the indexes were not
    read before the workers forked). `shards_touched`: those the first `minute` share of each
    partition's segments meets."""
    readers, partitions = max(1, workers), epoch.partitions
    segments = shard_visits = consumed = meeting_first = first_segments = 0
    touched: set[int] = set()
    for rank in range(world) if ranks is None else ranks:
        for worker in range(readers):
            # rank r's micro batch i is partition (i x world + r) mod P; worker w makes i = w, w + W, ...
            owned = {(i * world + rank) % partitions for i in range(worker, partitions // world, readers)}
            shards_met: set[int] = set()
            for q in owned:
                seg = epoch.segments(q)
                segments += len(seg)
                consumed += int((seg.hi - seg.lo).sum())
                shards_met.update(seg.shard.tolist())
                first_segments += int((seg.shard == 0).sum())
                touched.update(seg.shard[: math.ceil(minute * len(seg))].tolist())
            shard_visits += len(shards_met)
            meeting_first += 0 in shards_met
    return {
        "segments": segments,
        "shard_visits": shard_visits,
        "samples": consumed,
        "shards_touched": len(touched),
        "partitions_per_worker": partitions // world // readers,
        "workers_meeting_first": meeting_first,  # workers meeting shard 0, whose index each rank reads first
        "segments_of_first": first_segments,  # segments in shard 0 (its whole index: read before the fork)
    }


def blocks_lines(result: dict) -> list[str]:
    """print_plan's lines about the blocks mode."""
    mib = 1 << 20
    return [
        f"blocks mode: {result['blocks']:,} blocks of {result['block_bytes'] / mib:g} MiB "
        f"(~{result['block_samples']:.0f} samples), {result['partitions']:,} canonical partitions, shuffle buffer "
        f"{result['shuffle_buffer_samples']:,} samples; per process: block table "
        f"{result['block_table_bytes'] / mib:.1f} MiB ({result['block_table_s']:.2f} s), epoch "
        f"{result['epoch_bytes'] / mib:.2f} MiB built in {result['epoch_s']:.2f} s",
        f"each worker holds ~{result['buffer_bytes_per_worker'] / mib:,.0f} MiB of buffered samples; one block "
        f"feeds it for {result['block_seconds']:.2f} s (read {result.get('read_ahead_blocks', 2)} ahead: "
        f"latency hidden while that exceeds {result['latency_ms']:g} ms); its first batch waits for "
        f"{result['first_batch_blocks']} blocks",
    ]
