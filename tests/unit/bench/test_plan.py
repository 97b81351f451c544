"""A billion samples: one loader process's order and indexes stay small (measured in a fresh
process), and `msa-dist bench plan` reports what a cluster must sustain. Start-up time is printed
by the benchmark (docs/data-scale.md), not asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from msa_dist.bench.plan import node_minute, run_plan_bench

MIB = 1 << 20

MEASURE = """
import json, sys
from msa_dist.bench.plan import process_structures
print(json.dumps(process_structures(int(sys.argv[1]), int(sys.argv[2]), chunk_samples=4)))
"""


def test_a_billion_sample_split_costs_one_process_under_200_mb():
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(10**9), "1000"], capture_output=True, text=True, check=True, timeout=600
    )
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["shards"] == 10**6 and got["shard_table_bytes"] == 8 * (10**6 + 1)
    # the cache filled up to its limit and no further: the indexes a worker holds are bounded
    assert got["cache_bytes"] <= got["cache_limit_bytes"] <= 64 * MIB
    assert got["cached_indexes"] * got["index_record_bytes"] * 1000 == got["cache_bytes"]
    assert got["index_loads"] == got["cached_indexes"]  # each index read once while it fit
    assert got["peak_rss_bytes"] < 200 * MIB, got  # order + shard table + full index cache


def test_bench_plan_counts_what_a_node_reads():
    minute = node_minute(10**6, 1000, 4, gpus=8, nodes=4, batch_size=32, samples_per_s_per_gpu=100)
    # chunks of 4 in shards of 1000 (a multiple): a run is a chunk (two when neighbours meet in a batch)
    assert 0.24 < minute["requests_per_sample"] <= 0.25 and minute["shard_visits_per_sample"] <= 0.25
    assert minute["samples_per_minute"] == 8 * 188 * 32 and 0 < minute["shards_per_minute"] <= 1000
    small = run_plan_bench(10**5, 1000, nodes=2, gpus=2, workers=2, latency_ms=50, samples_per_s_per_gpu=500)
    assert small["index_loads_per_sample"] == 0  # 100 shards: every index fits each process's cache
    assert small["node_requests_per_s"] == 2 * 500 * small["requests_per_sample"]
    assert small["in_flight_per_worker"] == small["node_requests_per_s"] / 4 * 0.05


def test_bench_plan_command(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "msa_dist",
            "bench",
            "plan",
            "--samples",
            "2e5",
            "--nodes",
            "2",
            "--gpus",
            "2",
            "--workers",
            "2",
            "--json",
            str(tmp_path / "plan.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert "each node sustains" in out.stdout and "shards per minute" in out.stdout
    assert json.loads((tmp_path / "plan.json").read_text())["shards"] == 200


def test_bench_plan_blocks_mode_makes_few_requests_per_sample():
    blocks = {"block_bytes": 4 << 20, "buffer_samples": 1024, "partitions": 0}
    got = run_plan_bench(
        10**6, 1000, nodes=4, gpus=8, workers=2, latency_ms=30, samples_per_s_per_gpu=500, blocks=blocks, manifest=False
    )
    assert got["partitions"] == 4 * 8 * 2 and got["blocks"] == 4 * 1000  # 16 MiB shards in 4 blocks of 250
    # one request per block (a few more where a partition's range cuts one), each shard's index read by the
    # workers that meet it
    assert 1 / 250 <= got["requests_per_sample"] < 1.1 / 250
    assert got["requests_per_sample"] + got["index_loads_per_sample"] <= 0.01
    chunks = run_plan_bench(
        10**6, 1000, nodes=4, gpus=8, workers=2, latency_ms=30, samples_per_s_per_gpu=500, manifest=False
    )
    assert got["node_requests_per_s"] < chunks["node_requests_per_s"] / 25
