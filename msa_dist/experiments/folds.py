"""Stratified k-fold splits of the labelled pairs, written as shard sets of their own.

`build_folds` reads the train and val splits of a shard directory, deals each class's guids
(shuffled by `seed`) over K parts, writes each part once as tars (`parts/partK-NNNNNN.tar`,
byte-for-byte the source records) and gives every fold a directory with a manifest whose `train`
split lists the other parts and whose `val` split lists its own (the tars are symlinked in). A fold
directory is therefore an ordinary shard directory: `train` needs nothing from the loader beyond
`data.shards`. `folds.json` records the source, K, the seed and every part's guids; a later call
with the same options reuses it, with other options it is an error.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tarfile
from pathlib import Path

import webdataset as wds

from msa_dist.common.atomic import write_atomic
from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import LABELS
from msa_dist.data.format.index import index_name
from msa_dist.data.format.index_bin import binary_name
from msa_dist.data.format.manifest import MANIFEST_FORMAT, load_manifest, shard_urls, write_manifest
from msa_dist.data.shards import describe_shard

FOLDS_FILE = "folds.json"
LABELLED_SPLITS = ("train", "val")


def read_records(shard_dir: str | Path, splits=LABELLED_SPLITS) -> dict[str, dict]:
    """guid -> {extension: bytes} of every sample of `splits` (members grouped by key, as WebDataset does)."""
    manifest = load_manifest(shard_dir)
    records: dict[str, dict] = {}
    for split in splits:
        if split not in manifest["splits"]:
            continue
        for url in shard_urls(shard_dir, split, manifest):
            with tarfile.open(url, "r:") as tar:
                for member in tar:
                    if member.isfile():
                        key, _, ext = member.name.partition(".")
                        records.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return records


def assign_folds(labels: dict[str, int], k: int, seed: int) -> list[list[str]]:
    """Each class's guids shuffled by `seed` and dealt round-robin, continuing across classes,
    so every part holds each class's share and the parts' sizes differ by at most one."""
    if k < 2:
        raise MsaDistError(f"--folds must be at least 2; got {k}")
    rng = random.Random(seed)
    parts: list[list[str]] = [[] for _ in range(k)]
    position = 0
    for label in range(len(LABELS)):
        members = sorted(g for g, y in labels.items() if y == label)
        rng.shuffle(members)
        for guid in members:
            parts[position % k].append(guid)
            position += 1
    if min(len(p) for p in parts) == 0:
        raise MsaDistError(f"{len(labels)} labelled pairs are too few for {k} folds")
    for part in parts:
        rng.shuffle(part)  # mix the classes inside every shard
    return parts


def fold_dir(folds_root: str | Path, fold: int) -> Path:
    """The shard directory of fold `fold` (its val split is part `fold`)."""
    return Path(folds_root) / f"fold-{fold}"


def build_folds(shard_dir: str | Path, folds_root: str | Path, k: int, seed: int) -> dict:
    """Write (or reuse) the K fold shard sets under `folds_root`; returns folds.json's content."""
    folds_root = Path(folds_root)
    source = str(Path(shard_dir).resolve())
    path = folds_root / FOLDS_FILE
    if path.is_file():
        info = json.loads(path.read_text())
        if (info["source"], info["folds"], info["seed"]) != (source, k, seed):
            raise MsaDistError(
                f"{path} holds {info['folds']} folds (seed {info['seed']}) of {info['source']}: "
                "use another --run-dir, or the same --folds, --fold-seed and shards"
            )
        return info
    manifest = load_manifest(shard_dir)
    records = read_records(shard_dir)
    labels = {g: int(r["cls"]) for g, r in records.items() if "cls" in r}
    if not labels:
        raise MsaDistError(f"{shard_dir} has no labelled pairs in its train and val splits")
    parts = assign_folds(labels, k, seed)
    shard_size = int(manifest.get("options", {}).get("shard_size") or 1000)
    entries = [
        _write_part(folds_root / "parts", f"part{i}", part, records, labels, shard_size) for i, part in enumerate(parts)
    ]
    for fold in range(k):
        _write_fold(folds_root, fold, entries, manifest, source, seed)
    info = {"source": source, "folds": k, "seed": seed, "parts": parts}
    write_atomic(path, json.dumps(info))  # written last: a half-built set is rebuilt by the next call
    return info


def _write_part(parts_dir: Path, name: str, guids: list[str], records: dict, labels: dict, shard_size: int) -> dict:
    """One part's tars; returns its manifest split entry (names relative to parts_dir)."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    for old in parts_dir.glob(f"{name}-*.tar*"):  # the tars and their indexes
        old.unlink()
    counts: dict[str, int] = {}
    # mtime=0 and unbounded maxsize: the same folds give the same bytes (and sha256)
    with wds.ShardWriter(
        str(parts_dir / f"{name}-%06d.tar"),
        maxcount=shard_size,
        maxsize=float("inf"),
        verbose=0,
        encoder=False,
        mtime=0,
    ) as writer:
        for guid in guids:
            writer.write({"__key__": guid, **records[guid]})
            shard = Path(writer.fname).name
            counts[shard] = counts.get(shard, 0) + 1
    part_labels = [labels[g] for g in guids]
    return {
        "samples": len(guids),
        "labelled": len(guids),
        "class_counts": {label: part_labels.count(i) for i, label in enumerate(LABELS)},
        "shards": [describe_shard(parts_dir, n, c) for n, c in counts.items()],  # writes each index too
        "guids": list(guids),
    }


def _merge(entries: list[dict]) -> dict:
    return {
        "samples": sum(e["samples"] for e in entries),
        "labelled": sum(e["labelled"] for e in entries),
        "class_counts": {label: sum(e["class_counts"][label] for e in entries) for label in LABELS},
        "shards": [s for e in entries for s in e["shards"]],
        "guids": [g for e in entries for g in e["guids"]],
    }


def _write_fold(
    folds_root: Path, fold: int, entries: list[dict], source_manifest: dict, source: str, seed: int
) -> None:
    directory = fold_dir(folds_root, fold)
    if directory.exists():
        shutil.rmtree(directory)  # a fold set left half-built by a killed run
    directory.mkdir(parents=True)
    for entry in entries:
        for shard in entry["shards"]:
            for name in (shard["name"], index_name(shard["name"]), binary_name(shard["name"])):
                os.symlink(Path("..") / "parts" / name, directory / name)
    options = {
        **source_manifest.get("options", {}),
        "cv": {"source": source, "fold": fold, "folds": len(entries), "seed": seed},
    }
    manifest = {
        "format": MANIFEST_FORMAT,
        "labels": list(LABELS),
        "options": options,
        "splits": {"train": _merge([e for i, e in enumerate(entries) if i != fold]), "val": _merge([entries[fold]])},
        "decodings": source_manifest.get("decodings", {}),
        "skipped": [],
    }
    write_manifest(directory, manifest)


def fold_texts(folds_root: str | Path, fold: int, split: str) -> tuple[list[str], list[int]]:
    """(texts, labels) of one fold's split, in manifest order."""
    directory = fold_dir(folds_root, fold)
    records = read_records(directory, (split,))
    guids = load_manifest(directory)["splits"][split]["guids"]
    return ([records[g]["txt"].decode("utf-8") for g in guids], [int(records[g]["cls"]) for g in guids])
