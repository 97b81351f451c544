"""`msa-dist bench replicate`: a larger shard set made of copies of a small one (for device checks).

A GPU benchmark needs epochs long enough that worker start-up is not what it measures, but only a
small slice of real pairs travels to the GPU machine. Copies get new keys (`<key>_r<n>`), so their
augmentation differs; bytes are copied as they are (no re-encoding), so building is fast.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import webdataset as wds

from msa_dist.common.errors import MsaDistError
from msa_dist.data.format.manifest import load_manifest, shard_urls, write_manifest
from msa_dist.data.format.tario import tar_samples
from msa_dist.data.shards import describe_shard, move_shard


def replicate_shards(src_dir: str | Path, out_dir: str | Path, copies: int, shard_size: int = 1000) -> dict:
    """Write `copies` copies of every split of `src_dir` into `out_dir`; returns the new manifest."""
    if copies < 1:
        raise MsaDistError(f"--copies must be at least 1; got {copies}")
    manifest = load_manifest(src_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.tar")) or (out / "manifest.json").exists():
        raise MsaDistError(f"--out {out} already holds shards; give an empty directory")
    splits = {}
    for split, info in manifest["splits"].items():
        if not info.get("shards"):
            continue
        samples = list(tar_samples(handler=lambda exc: False)([{"url": u} for u in shard_urls(src_dir, split)]))
        splits[split] = _write_copies(out, split, samples, copies, shard_size, info)
    new = {
        **manifest,
        "splits": splits,
        "skipped": [],
        "options": {**manifest["options"], "replicated_from": str(Path(src_dir).resolve()), "copies": copies},
    }
    write_manifest(out, new)
    return new


def _write_copies(out: Path, split: str, samples: list[dict], copies: int, shard_size: int, info: dict) -> dict:
    counts: dict[str, int] = {}
    guids = []
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        with wds.ShardWriter(
            str(Path(tmp) / f"{split}-%06d.tar"),
            maxcount=shard_size,
            maxsize=float("inf"),
            verbose=0,
            encoder=False,
            mtime=0,
        ) as writer:
            for n in range(copies):
                for sample in samples:
                    record = {k: v for k, v in sample.items() if not k.startswith("__")}
                    record["__key__"] = f"{sample['__key__']}_r{n}"
                    writer.write(record)
                    guids.append(record["__key__"])
                    name = Path(writer.fname).name
                    counts[name] = counts.get(name, 0) + 1
        shards = [describe_shard(Path(tmp), name, n) for name, n in counts.items()]
        for name in counts:
            move_shard(Path(tmp), out, name)
    entry = {"samples": len(guids), "labelled": info.get("labelled", 0) * copies, "shards": shards, "guids": guids}
    if "class_counts" in info:
        entry["class_counts"] = {label: n * copies for label, n in info["class_counts"].items()}
    return entry
