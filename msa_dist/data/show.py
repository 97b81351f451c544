"""`msa-dist shards show DIR_OR_URL`: the first few samples of a split, to see what was packed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from msa_dist.common.errors import MsaDistError
from msa_dist.data.loading.images import stored_size
from msa_dist.data.loading.reader import SampleReader, ShardSet

SHOWN_TEXT_BYTES = 2000  # a table row, not a 50 MB text


def show_samples(shard_dir: str | Path, split: str = "train", n: int = 5) -> list[dict]:
    """The first `n` samples of `split`: key, label name (None when unlabelled), text, stored image size.
    Reads those samples alone, through the shard indexes."""
    shard_set = ShardSet(str(shard_dir))
    reader = SampleReader(shard_set, split)
    labels = shard_set.manifest.get("labels", [])
    rows: list[dict] = []
    for sample in reader.fetch(np.arange(min(n, sum(reader.sizes)))):
        if isinstance(sample, Exception):
            raise MsaDistError(
                f"cannot read split {split} of {shard_dir}: {sample}; run `msa-dist shards verify {shard_dir}`"
            )
        try:
            width, height = stored_size(sample["jpg"]) if "jpg" in sample else (0, 0)
        except Exception as exc:
            raise MsaDistError(
                f"cannot read the image of sample {sample['__key__']} in split {split} of "
                f"{shard_dir}: {str(exc)[:120]}; run `msa-dist shards verify {shard_dir}`"
            ) from None
        rows.append(
            {
                "key": sample["__key__"],
                "shard": sample["__url__"].rsplit("/", 1)[-1],
                "label": _label_name(sample.get("cls"), labels),
                "text": sample.get("txt", b"")[:SHOWN_TEXT_BYTES].decode("utf-8", errors="replace"),
                "image": f"{width}x{height}",
                "image_bytes": len(sample.get("jpg", b"")),
            }
        )
    return rows


def _label_name(cls, labels: list) -> str | None:
    """The label's name; None when unlabelled; "invalid (...)" for a `cls` that is no label index."""
    if cls is None:
        return None
    value = cls.strip()
    if value.isdigit() and len(value) <= 3 and int(value) < len(labels):
        return labels[int(value)]
    return f"invalid ({cls[:20]!r})"


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
