"""Packing the raw pairs into WebDataset shards (`msa-dist shards build`); verify.py checks them.

A build checks every listed pair first, splits the usable ones, writes the tars (each with its
sample index beside it, data/format/index.py) and the manifest into a temporary folder inside `out_dir`,
then moves them into place with the manifest last, so a reader sees either the old complete set,
no manifest, or the new complete set.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import webdataset as wds
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import LABELS
from msa_dist.common.limits import MAX_IMAGE_BYTES, read_input
from msa_dist.data.format.index import INDEX_SUFFIX, index_name, scan_tar
from msa_dist.data.format.index_bin import BINARY_SUFFIX, binary_name, records_layout, to_binary
from msa_dist.data.format.manifest import DEFAULT_JPEG_QUALITY, MANIFEST_FORMAT, MANIFEST_NAME, write_manifest
from msa_dist.data.raw import (
    DATA_DIR,
    TEST_FILE,
    TRAINVAL,
    BadRecord,
    Sample,
    check_record,
    list_records,
    reencode_image,
)

SHARD_NAME_RE = re.compile(r"^[A-Za-z0-9_]+-\d{6}\.tar$")
SPLIT_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
SKIPPED_SHOWN = 5


def build_shards(
    data_root: str | Path,
    out_dir: str | Path = "shards",
    val_fraction: float = 0.1,
    seed: int = 0,
    shard_size: int = 1000,
    strict: bool = False,
    labels_file: str | Path | None = None,
    split_name: str | None = None,
    image_size: int = 0,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    console: Console | None = None,
) -> dict:
    """Check, split and pack DATA_ROOT's pairs into `out_dir`; returns the manifest written there."""
    _check_options(val_fraction, shard_size, labels_file, split_name, image_size, jpeg_quality)
    out = Path(out_dir)
    _check_out_dir(out)
    root = Path(data_root)
    entries = list_records(root, labels_file, split_name)
    with Progress(console=console, transient=True, disable=console is None) as progress:
        samples, skipped = _check_entries(entries, root / DATA_DIR, strict, progress)
        if not samples:
            first = f" (first: {skipped[0].message()})" if skipped else ""
            raise MsaDistError(f"no usable pairs: all {len(entries)} listed records were skipped{first}")
        if labels_file is not None:
            splits = {split_name: samples}
        else:
            splits = _split_train_val(samples, val_fraction, seed)
            if (root / TEST_FILE).is_file():
                splits["test"] = [s for s in samples if s.record.split == "test"]
        options = {
            "data_root": str(root.resolve()),
            "out_dir": str(out.resolve()),
            "val_fraction": val_fraction,
            "seed": seed,
            "shard_size": shard_size,
            "strict": strict,
            "labels_file": None if labels_file is None else str(Path(labels_file).resolve()),
            "split_name": split_name,
            "image_size": image_size,
            "jpeg_quality": jpeg_quality if image_size > 0 else None,
        }
        manifest = {
            "format": MANIFEST_FORMAT,
            "labels": list(LABELS),
            "options": options,
            "splits": {},
            "decodings": {"utf-8": 0, "gb18030": 0},
            "skipped": [b.to_dict() for b in skipped],
        }
        for sample in samples:
            manifest["decodings"][sample.encoding] += 1
        try:
            out.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-build-", dir=out))
        except OSError as exc:
            raise MsaDistError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
        try:
            task = progress.add_task("writing shards", total=len(samples))
            for name, split_samples in splits.items():
                labelled_split = labels_file is None and name != "test"
                manifest["splits"][name] = _write_split(
                    tmp,
                    name,
                    split_samples,
                    shard_size,
                    (image_size, jpeg_quality),
                    labelled_split,
                    lambda: progress.advance(task),
                )
            _publish(tmp, out, manifest)
        except OSError as exc:
            raise MsaDistError(f"writing shards into {out} failed: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _check_options(
    val_fraction: float, shard_size: int, labels_file, split_name, image_size: int, jpeg_quality: int
) -> None:
    if not 0 <= val_fraction < 1:
        raise MsaDistError(f"--val-fraction must be in [0, 1); got {val_fraction}")
    if shard_size < 1:
        raise MsaDistError(f"--shard-size must be at least 1; got {shard_size}")
    if image_size < 0:
        raise MsaDistError(f"--image-size must be >= 0 (0 keeps the original images); got {image_size}")
    if not 1 <= jpeg_quality <= 100:
        raise MsaDistError(f"--jpeg-quality must be in [1, 100]; got {jpeg_quality}")
    if (labels_file is None) != (split_name is None):
        raise MsaDistError("--labels FILE and --split NAME go together: give both or neither")
    if split_name is not None and not SPLIT_NAME_RE.match(split_name):
        raise MsaDistError(
            f"--split name must be letters, digits or '_' (it names the shard files); got {split_name!r}"
        )


def _check_out_dir(out: Path) -> None:
    """Fail before the slow part if --out cannot be written (nothing is created yet)."""
    if out.exists() and not out.is_dir():
        raise MsaDistError(f"--out {out} exists and is not a directory")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise MsaDistError(f"cannot write to --out {out}: {existing} is not a writable directory")


def _check_entries(
    entries: list, data_dir: Path, strict: bool, progress: Progress
) -> tuple[list[Sample], list[BadRecord]]:
    """Check every listed pair in file order; strict mode stops at the first bad one."""
    samples: list[Sample] = []
    skipped: list[BadRecord] = []
    task = progress.add_task("checking pairs", total=len(entries))
    for entry in entries:
        result = entry if isinstance(entry, BadRecord) else check_record(entry, data_dir)
        if isinstance(result, BadRecord):
            if strict:
                raise MsaDistError(f"strict: {result.message()}")
            skipped.append(result)
        else:
            samples.append(result)
        progress.advance(task)
    return samples, skipped


def _split_train_val(samples: list[Sample], val_fraction: float, seed: int) -> dict[str, list[Sample]]:
    """Stratified split of the labelled pairs: round(val_fraction * n) of each class go to val."""
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in range(len(LABELS)):
        members = [s for s in samples if s.record.split == TRAINVAL and s.record.label == label]
        rng.shuffle(members)
        n_val = round(val_fraction * len(members))
        val += members[:n_val]
        train += members[n_val:]
    # Mix the classes so every shard (and every rank's share of shards) holds all of them.
    rng.shuffle(train)
    rng.shuffle(val)
    return {"train": train, "val": val}


def _write_split(
    tmp: Path,
    name: str,
    samples: list[Sample],
    shard_size: int,
    reencode: tuple[int, int],
    labelled_split: bool,
    advance,
) -> dict:
    """Write one split's tars into `tmp`; returns its manifest entry."""
    counts: dict[str, int] = {}
    if samples:
        # maxsize is unbounded so shard boundaries depend only on shard_size; mtime=0 makes the
        # tars (and their sha256) reproducible.
        with wds.ShardWriter(
            str(tmp / f"{name}-%06d.tar"), maxcount=shard_size, maxsize=float("inf"), verbose=0, encoder=False, mtime=0
        ) as writer:
            for sample in samples:
                writer.write(_to_webdataset(sample, *reencode))
                shard_name = Path(writer.fname).name
                counts[shard_name] = counts.get(shard_name, 0) + 1
                advance()
    labels = [s.record.label for s in samples if s.record.label is not None]
    entry: dict = {"samples": len(samples), "labelled": len(labels)}
    if labelled_split or labels:
        entry["class_counts"] = {label: labels.count(i) for i, label in enumerate(LABELS)}
    entry["shards"] = [describe_shard(tmp, shard_name, n) for shard_name, n in counts.items()]
    entry["guids"] = [s.record.guid for s in samples]
    return entry


def describe_shard(tmp: Path, shard_name: str, samples: int) -> dict:
    """Write a shard's index beside it (data/format/index.py); returns its manifest entry."""
    data = (tmp / shard_name).read_bytes()
    index = scan_tar(data, shard_name)
    (tmp / index_name(shard_name)).write_bytes(index.to_json())
    binary = to_binary(index)
    (tmp / binary_name(shard_name)).write_bytes(binary)  # the compact form (index_bin.py)
    digest = hashlib.sha256(data).hexdigest()
    # "index": where its records lie, so a block's records are read alone (block_reads.py)
    return {
        "name": shard_name,
        "samples": samples,
        "bytes": len(data),
        "sha256": digest,
        "index": records_layout(binary),
    }


def _to_webdataset(sample: Sample, image_size: int, jpeg_quality: int) -> dict:
    image = read_input(sample.image_path, MAX_IMAGE_BYTES)  # checked before; still a bounded regular file
    if image_size > 0:
        image = reencode_image(image, image_size, jpeg_quality)
    record = {"__key__": sample.record.guid, "jpg": image, "txt": sample.text.encode("utf-8")}
    if sample.record.label is not None:
        record["cls"] = str(sample.record.label).encode("ascii")
    return record


def _publish(tmp: Path, out: Path, manifest: dict) -> None:
    """Move the new shards into `out` and drop stale ones; the manifest goes last (the commit point)."""
    new_names = [s["name"] for split in manifest["splits"].values() for s in split["shards"]]
    # Remove the old manifest first: while shards are swapped no manifest exists, so no reader can
    # pair an old manifest with new shards (or the reverse).
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for path in out.iterdir():
        shard = path.name.removesuffix(INDEX_SUFFIX).removesuffix(BINARY_SUFFIX)
        if SHARD_NAME_RE.match(shard) and shard not in new_names and path.is_file():
            path.unlink()
    for shard_name in new_names:
        move_shard(tmp, out, shard_name)
    write_manifest(out, manifest)


def move_shard(src: Path, dst: Path, shard_name: str) -> None:
    """Move a finished shard and its two indexes from `src` into `dst`, the tar last (the indexes of a
    shard are never missing once the shard is there)."""
    for name in (index_name(shard_name), binary_name(shard_name), shard_name):
        os.replace(Path(src) / name, Path(dst) / name)


def print_build_summary(manifest: dict, console: Console) -> None:
    """Print the splits (samples, classes, shards), text decodings and skipped records of a build."""
    table = Table(title=f"Shards in {escape(manifest['options'].get('out_dir', ''))}")
    table.add_column("split")
    table.add_column("samples", justify="right")
    for label in LABELS:
        table.add_column(label, justify="right")
    table.add_column("shards", justify="right")
    for split, info in manifest["splits"].items():
        counts = info.get("class_counts")
        cells = [str(counts[label]) if counts else "-" for label in LABELS]
        table.add_row(escape(split), str(info["samples"]), *cells, str(len(info["shards"])))
    console.print(table)
    decodings = ", ".join(f"{name} {n}" for name, n in manifest["decodings"].items())
    console.print(f"text decodings: {decodings}", highlight=False)
    skipped = manifest["skipped"]
    if not skipped:
        console.print("skipped: none")
        return
    reasons = Counter(s["reason"] for s in skipped)
    by_reason = ", ".join(f"{escape(reason)} {n}" for reason, n in reasons.most_common())
    console.print(f"[yellow]skipped {len(skipped)} records[/]: {by_reason}", highlight=False)
    for s in skipped[:SKIPPED_SHOWN]:
        console.print(
            escape(f"  guid {s['guid']} ({s['split']}, {s['source']} line {s['line']}): {s['reason']} ({s['detail']})"),
            highlight=False,
        )
    if len(skipped) > SKIPPED_SHOWN:
        console.print(f"  ... and {len(skipped) - SKIPPED_SHOWN} more, all listed in {MANIFEST_NAME}", highlight=False)
