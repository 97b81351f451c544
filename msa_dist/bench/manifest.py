"""`msa-dist bench manifest`: open time and memory of a manifest for 10^9 samples (data/format/shard_table.py).

It writes a shard folder's manifest alone (no shards): `manifest.json` whose train split of S shards
is a binary shard table, with synthetic names, counts, sizes and checksums; then, in a fresh Python
process (the libraries it needs imported first, so they are not counted), opens it as the loader does
(`ShardSet`: the JSON, then the table's counts, sizes and names) and reads one shard's entry and the
split's columns; it reports the seconds that took and the resident set it added. For comparison, the
same split as today's JSON list costs `bench plan`'s manifest line (410 MiB and 1.8 s at 10^6 shards).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from msa_dist.data.format.manifest import MANIFEST_FORMAT, MANIFEST_NAME
from msa_dist.data.format.shard_table import pack_table, table_reference

_MEASURE = """
import json, sys, time
from msa_dist.bench.plan import rss_bytes
from msa_dist.data.format.shard_table import shard_column
from msa_dist.data.loading.reader import ShardSet
before = rss_bytes()
t0 = time.perf_counter()
shards = ShardSet(sys.argv[1]).shards("train")
entry = shards[len(shards) // 2]
samples = int(shard_column(shards, "samples").sum())
seconds = time.perf_counter() - t0
print(json.dumps({"open_s": seconds, "rss_delta_bytes": rss_bytes() - before, "samples": samples,
                  "table_held_bytes": shards.memory_bytes, "middle_entry": entry}))
"""


def write_manifest_only(out: str | Path, shards: int, shard_samples: int, sample_bytes: int, seed: int = 0) -> dict:
    """A manifest (JSON and shard table) of `shards` synthetic train shards in `out`; its facts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    names = np.char.add(np.char.add("train-", np.char.zfill(np.arange(shards).astype(str), 7)), ".tar").astype("S")
    samples = np.full(shards, shard_samples, dtype=np.int64)
    digests = np.random.default_rng(seed).bytes(32 * shards)
    fields = ["cls", "jpg", "txt"]  # where each binary index's records lie (its header: 32 bytes + names)
    at = 32 + (np.char.str_len(names.astype(str)) + 12 + 7) // 8 * 8
    data = pack_table(names, samples, samples * sample_bytes + 1024, digests, (at, np.full(shards, 52)))
    reference = table_reference("train", data, shards, fields)
    (out / reference["file"]).write_bytes(data)
    split = {"samples": shards * shard_samples, "labelled": shards * shard_samples, "shard_table": reference}
    manifest = {"format": MANIFEST_FORMAT, "labels": ["negative", "neutral", "positive"], "splits": {"train": split}}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return {
        "write_s": time.perf_counter() - t0,
        "table_bytes": len(data),
        "json_bytes": (out / MANIFEST_NAME).stat().st_size,
    }


def run_manifest_bench(out: str, shards: int, shard_samples: int, sample_bytes: int) -> dict:
    written = write_manifest_only(out, shards, shard_samples, sample_bytes)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _MEASURE, out], capture_output=True, text=True, env=env, check=True)
    opened = json.loads(done.stdout.strip().splitlines()[-1])
    return {"bench": "manifest", "shards": shards, "shard_samples": shard_samples, **written, **opened}


def print_manifest(result: dict, console) -> None:
    mib = 1 << 20
    console.print(
        f"manifest of {result['samples']:,} samples in {result['shards']:,} shards: {result['json_bytes']:,} bytes of "
        f"JSON + a {result['table_bytes'] / mib:.1f} MiB shard table (written in {result['write_s']:.1f} s); a fresh "
        f"process opens it in {result['open_s']:.2f} s, its resident set +{result['rss_delta_bytes'] / mib:.1f} MiB "
        f"(table columns held: {result['table_held_bytes'] / mib:.1f} MiB); middle shard: "
        f"{result['middle_entry']['name']}",
        highlight=False,
    )
