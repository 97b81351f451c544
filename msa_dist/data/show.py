"""`msa-dist shards show DIR_OR_URL`: the first few samples of a split, to see what was packed."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Iterator

from msa_dist.data.images import stored_size
from msa_dist.data.manifest import load_manifest
from msa_dist.data.storage import open_store
from msa_dist.errors import MsaDistError


def _samples(data: bytes) -> Iterator[dict]:
    """Samples of one shard's bytes in written order: {key: ..., ext: bytes} (members of a key are adjacent)."""
    current: dict = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            current[ext] = tar.extractfile(member).read()
    if current:
        yield current


def show_samples(shard_dir: str | Path, split: str = "train", n: int = 5) -> list[dict]:
    """The first `n` samples of `split`: key, label name (None when unlabelled), text, stored image size."""
    manifest = load_manifest(shard_dir)
    if split not in manifest["splits"]:
        raise MsaDistError(f"split '{split}' is not in {shard_dir} (splits: {', '.join(manifest['splits']) or 'none'})")
    labels = manifest.get("labels", [])
    rows: list[dict] = []
    store = open_store(str(shard_dir))
    for shard in manifest["splits"][split].get("shards", []):
        try:
            for sample in _samples(store.read(shard["name"])):
                if len(rows) == n:
                    return rows
                cls = sample.get("cls")
                width, height = stored_size(sample["jpg"]) if "jpg" in sample else (0, 0)
                rows.append({"key": sample["__key__"], "shard": shard["name"],
                             "label": labels[int(cls)] if cls is not None else None,
                             "text": sample.get("txt", b"").decode("utf-8", errors="replace"),
                             "image": f"{width}x{height}", "image_bytes": len(sample.get("jpg", b""))})
        except (OSError, tarfile.TarError) as exc:
            raise MsaDistError(f"cannot read shard {store.url(shard['name'])}: {exc}; "
                               f"run `msa-dist shards verify {shard_dir}`") from None
    return rows


def print_samples(rows: list[dict], split: str, console) -> None:
    """A table of `show_samples` rows."""
    from rich.table import Table
    table = Table(title=f"{split}: first {len(rows)} samples")
    table.add_column("key", no_wrap=True)
    table.add_column("label", no_wrap=True)
    table.add_column("image (stored)", no_wrap=True)
    table.add_column("text", overflow="fold", ratio=1)  # the text takes the rest of the width
    for row in rows:
        image = f"{row['image']}, {row['image_bytes'] / 1024:.1f} KiB"
        table.add_row(row["key"], row["label"] or "-", image, row["text"])
    console.print(table)
