"""`msa-dist shards index`: sample indexes (and, if there is none, a manifest) for a tar set.

For shards built elsewhere (any webdataset tars of `key.ext` members) and for shard sets built
before indexes existed. Each shard is read once, whole; its index is written beside it. Without a
manifest, the splits are named by the shard names (`train-000000.tar` -> split `train`; a name
without `-` goes to `train`), and class counts come from integer `cls` members.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import LABELS
from msa_dist.common.limits import MAX_SHARD_BYTES
from msa_dist.data.format.index import index_name, scan_tar, shard_size
from msa_dist.data.format.index_bin import binary_name, records_layout, to_binary
from msa_dist.data.format.manifest import MANIFEST_FORMAT, MANIFEST_NAME, check_manifest, shard_name_problem
from msa_dist.data.stores import FsspecStore, LocalStore, ShardStore, open_store


def _list_tars(store: ShardStore) -> list[str]:
    if isinstance(store, LocalStore):
        if not store.root.is_dir():
            raise MsaDistError(f"{store.root} is not a directory")
        return sorted(p.name for p in store.root.glob("*.tar") if shard_name_problem(p.name) is None)
    if isinstance(store, FsspecStore):
        return sorted(Path(p).name for p in store._fs_handle().glob(store.url("*.tar")))
    if hasattr(store, "list_names"):  # S3Store
        return sorted(name for name in store.list_names() if name.endswith(".tar"))
    raise MsaDistError(
        f"cannot list the files at {store.location}: give a manifest.json there (an HTTP server "
        "lists nothing), or index a local copy"
    )


def _class_counts(data: bytes, index) -> dict | None:
    """Counts per label name from integer `cls` members; None if a sample has none. MsaDistError naming
    the sample for a `cls` that is not a label index (7, -1, "abc"): an invalid label, not a missing one."""
    column = index.fields.get("cls")
    if column is None:
        return None
    values: Counter = Counter()
    for key, where in zip(index.keys, column):
        if where is None:
            continue
        value = data[where[0] : where[0] + where[1]].strip()
        if not (value.isdigit() and len(value) <= 3 and int(value) < len(LABELS)):
            raise MsaDistError(
                f"shard {index.shard}: sample {key} has an invalid label cls={value[:20]!r} "
                f"(expected 0..{len(LABELS) - 1}); fix or drop it, then index again"
            )
        values[int(value)] += 1
    if any(where is None for where in column):
        return None
    return {label: values.get(i, 0) for i, label in enumerate(LABELS)}


def index_shard_set(location: str) -> dict:
    """Write every shard's index (and the manifest, if absent); returns {split: samples}."""
    store = open_store(location)
    manifest = (
        check_manifest(store.read(MANIFEST_NAME), store.url(MANIFEST_NAME)) if store.exists(MANIFEST_NAME) else None
    )
    if manifest is not None:
        names = {split: [s["name"] for s in info.get("shards", [])] for split, info in manifest["splits"].items()}
    else:
        names = {}
        for name in _list_tars(store):
            names.setdefault(name[:-4].rsplit("-", 1)[0] if "-" in name else "train", []).append(name)
        if not names:
            raise MsaDistError(f"no .tar files at {location}")
    splits: dict[str, dict] = {}
    for split, shard_names in names.items():
        entry = {"samples": 0, "labelled": 0, "shards": [], "guids": []}
        counts: Counter = Counter()
        for name in shard_names:
            shard_size(store, name)  # a local shard must be a regular file: reading a FIFO would block
            data = store.read(name, MAX_SHARD_BYTES)
            index = scan_tar(data, name)
            store.write(index_name(name), index.to_json())
            binary = to_binary(index)
            store.write(binary_name(name), binary)  # the compact form (index_bin.py)
            digest = hashlib.sha256(data).hexdigest()
            shard = {"name": name, "samples": len(index), "bytes": len(data), "sha256": digest}
            entry["shards"].append({**shard, "index": records_layout(binary)})  # where its records lie
            entry["samples"] += len(index)
            entry["guids"] += index.keys
            by_class = _class_counts(data, index)
            counts.update(by_class or {})
            entry["labelled"] += sum(by_class.values()) if by_class else 0
        if entry["labelled"]:
            entry["class_counts"] = {label: counts.get(label, 0) for label in LABELS}
        splits[split] = entry
    if manifest is None:
        manifest = {
            "format": MANIFEST_FORMAT,
            "labels": list(LABELS),
            "options": {"indexed_from": location},
            "splits": splits,
            "decodings": {},
            "skipped": [],
        }
        store.write(MANIFEST_NAME, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
    return {split: info["samples"] for split, info in splits.items()}
