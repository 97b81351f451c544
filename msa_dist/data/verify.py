"""`msa-dist shards verify`: every shard of the manifest read again (checksum, index, samples, keys)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from msa_dist.common.errors import MsaDistError
from msa_dist.common.limits import MAX_SHARD_BYTES
from msa_dist.data.format.index import read_index, scan_tar
from msa_dist.data.format.index_bin import binary_name, load_index
from msa_dist.data.loading.reader import ShardSet
from msa_dist.data.shards import SHARD_NAME_RE
from msa_dist.data.stores import is_url


def verify_shards(shard_dir: str) -> dict:
    """Re-read every shard in the manifest (checksum, index, samples, keys); MsaDistError naming the first mismatch.
    `shard_dir` may be a URL (the shards are then downloaded once each)."""
    shard_set = ShardSet(str(shard_dir))
    summary = {"shards": 0, "samples": 0, "splits": {}, "unlisted": []}
    listed = set()
    for split, info in shard_set.manifest["splits"].items():
        if "shard_table" in info:
            _verify_table(shard_set, info["shard_table"])
        keys: list[str] = []
        for shard in info["shards"]:
            listed.add(shard["name"])
            keys += _verify_shard(shard_set, split, shard)
            summary["shards"] += 1
        if len(keys) != info["samples"]:
            raise MsaDistError(f"split {split}: its shards hold {len(keys)} samples, manifest says {info['samples']}")
        if "guids" in info and keys != info["guids"]:
            index = next(i for i, (a, b) in enumerate(zip(keys, info["guids"])) if a != b)
            raise MsaDistError(
                f"split {split}: sample {index} is guid {keys[index]} in the shards but "
                f"{info['guids'][index]} in the manifest"
            )
        summary["splits"][split] = len(keys)
        summary["samples"] += len(keys)
    if not is_url(str(shard_dir)):
        summary["unlisted"] = sorted(
            p.name for p in Path(shard_dir).iterdir() if SHARD_NAME_RE.match(p.name) and p.name not in listed
        )
    return summary


def _verify_table(shard_set: ShardSet, reference: dict) -> None:
    """A split's binary shard table against the checksum the manifest gives it."""
    data = shard_set.store.read(reference["file"], MAX_SHARD_BYTES)
    if hashlib.sha256(data).hexdigest() != reference.get("sha256"):
        raise MsaDistError(
            f"shard table {shard_set.store.url(reference['file'])}: sha256 differs from the manifest's "
            "(file changed or corrupt)"
        )


def _verify_shard(shard_set: ShardSet, split: str, shard: dict) -> list[str]:
    """Check one shard against its manifest entry and its index; its keys."""
    store, name = shard_set.store, shard["name"]
    if not store.exists(name):
        raise MsaDistError(f"shard {name} ({split}) is listed in the manifest but missing from {shard_set.location}")
    data = store.read(name, MAX_SHARD_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    if digest != shard["sha256"]:
        raise MsaDistError(
            f"shard {store.url(name)}: sha256 {digest[:16]}... differs from the manifest's "
            f"{shard['sha256'][:16]}... (file changed or corrupt)"
        )
    actual = scan_tar(data, name)
    if len(actual) != shard["samples"]:
        raise MsaDistError(f"shard {store.url(name)}: holds {len(actual)} samples, manifest says {shard['samples']}")
    stored = read_index(store, name)
    binary = load_index(store, name).to_shard_index() if store.exists(binary_name(name)) else actual
    if stored != actual or binary != actual:  # what the index says, not its bytes: the order of `fields` is free
        raise MsaDistError(
            f"the index of {store.url(name)} does not match the shard: run "
            f"`msa-dist shards index {shard_set.location}` again"
        )
    for i, key in enumerate(actual.keys):
        fields = {f for f, _, _ in actual.members(i)}
        if not {"jpg", "txt"} <= fields:
            raise MsaDistError(f"shard {store.url(name)}: sample {key} lacks jpg or txt (has {sorted(fields)})")
    return actual.keys


def print_verify_summary(summary: dict, console: Console) -> None:
    """Print what `verify_shards` checked, and any shard files on disk that no manifest lists."""
    per_split = ", ".join(f"{escape(split)} {n}" for split, n in summary["splits"].items())
    console.print(
        f"[green]ok[/]: {summary['shards']} shards, {summary['samples']} samples ({per_split})", highlight=False
    )
    if summary["unlisted"]:
        console.print(
            escape(f"note: shard files not in the manifest (ignored): {', '.join(summary['unlisted'])}"),
            highlight=False,
        )
