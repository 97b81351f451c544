"""`manifest.json`: what a shard directory holds (splits, shards with checksums, skipped records).

Layout (format 1):
    {"format": 1, "labels": [...], "options": {...build options...},
     "splits": {split: {"samples": n, "labelled": n, "class_counts": {label: n} (labelled splits),
                        "shards": [{"name": "train-000000.tar", "samples": n, "bytes": n, "sha256": hex}],
                        "guids": [guid, ... in written order]}},
     "decodings": {"utf-8": n, "gb18030": n},
     "skipped": [{"guid": ..., "split": ..., "source": ..., "line": n, "reason": ..., "detail": ...}]}
Each shard has a sample index beside it (`NAME.tar.idx.json`, see index.py); the folder may be a
URL (stores/). A split of more than TABLE_ABOVE_SHARDS shards keeps its shard list in a binary table
beside the manifest instead ("shard_table" in place of "shards" and "guids": shard_table.py); readers
see the table as the split's "shards" (`attach_tables`).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath, PureWindowsPath

from msa_dist.common import atomic
from msa_dist.common.errors import MsaDistError
from msa_dist.common.limits import is_count
from msa_dist.data.format.shard_table import (
    TABLE_ABOVE_SHARDS,
    ShardTable,
    index_fields,
    table_reference,
    to_table,
)
from msa_dist.data.stores import is_url, open_store

MANIFEST_NAME = "manifest.json"
# `shards build` re-encodes images to the training resolution (the configs' data.resize_size), so
# that random and center crops need no resize; quality 85 decodes ~10% faster than 90.
DEFAULT_IMAGE_SIZE = 224
DEFAULT_JPEG_QUALITY = 85
MANIFEST_FORMAT = 1


def _build_hint(shard_dir: Path) -> str:
    return f"build shards with `msa-dist shards build DATA_ROOT --out {shard_dir}`"


def load_manifest(shard_dir: str | Path) -> dict:
    """Read and sanity-check the manifest of a shard folder or URL; MsaDistError with a hint when absent or invalid."""
    if is_url(str(shard_dir)):
        store = open_store(str(shard_dir))
        try:
            return attach_tables(check_manifest(store.read(MANIFEST_NAME), store.url(MANIFEST_NAME)), store)
        except MsaDistError as exc:
            raise MsaDistError(f"{exc}: {_build_hint(shard_dir)}") from None
    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise MsaDistError(f"shard directory {shard_dir} does not exist: {_build_hint(shard_dir)}")
    path = shard_dir / MANIFEST_NAME
    if not path.is_file():
        raise MsaDistError(f"no {MANIFEST_NAME} in {shard_dir}: {_build_hint(shard_dir)}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MsaDistError(f"{path} is not readable ({exc}): {_build_hint(shard_dir)}") from None
    return attach_tables(check_manifest(raw, str(path)), open_store(str(shard_dir)))


def attach_tables(manifest: dict, store) -> dict:
    """Each split written as a binary shard table gets it as its "shards" (read now: shard_table.py)."""
    for info in manifest["splits"].values():
        if "shard_table" in info:
            info["shards"] = ShardTable(store, info["shard_table"])
    return manifest


def check_manifest(raw: bytes, where: str) -> dict:
    """Parse a manifest's bytes and check its shape; MsaDistError naming `where` otherwise."""
    hint = "build shards with `msa-dist shards build DATA_ROOT --out DIR`"
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MsaDistError(f"{where} is not readable JSON ({exc}): {hint}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise MsaDistError(f"{where} has no 'splits' mapping: {hint}")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise MsaDistError(
            f"{where} has format {manifest.get('format')!r}, this version reads format {MANIFEST_FORMAT}: {hint}"
        )
    labels = manifest.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise MsaDistError(f"{where} has 'labels' that is not a list of names: {hint}")
    for split, info in manifest["splits"].items():
        problem = _split_problem(info)
        if problem:
            raise MsaDistError(f"{where}: split {split!r} {problem}: {hint}")
    return manifest


def shard_name_problem(name) -> str | None:
    """Why `name` cannot name a shard file inside its folder (a path, `..`, a hidden file); None if it can."""
    if not isinstance(name, str) or not name:
        return "is not a file name"
    if (
        name != PurePosixPath(name).name
        or "\\" in name
        or "\0" in name
        or name.startswith(".")
        or PureWindowsPath(name).drive
    ):
        return f"{name[:80]!r} is not a plain file name inside the shard folder"
    return None


def _split_problem(info) -> str | None:
    """What is wrong with one split's entry (its counts, its shard list); None if nothing."""
    if not isinstance(info, dict):
        return "is not a mapping"
    if "samples" not in info or ("shards" not in info and "shard_table" not in info):
        return "lacks 'samples' or 'shards'"
    if "shard_table" in info:
        ref = info["shard_table"]
        if not isinstance(ref, dict) or shard_name_problem(ref.get("file")) or not is_count(ref.get("shards")):
            return "has a bad 'shard_table' entry (file: a plain name, shards: a count)"
        return None
    for key in ("samples", "labelled"):
        if key in info and not is_count(info[key]):
            return f"has {key} {info[key]!r}, not a count"
    shards = info["shards"]
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        return "has 'shards' that is not a list of entries"
    for shard in shards:
        problem = shard_name_problem(shard.get("name"))
        if problem:
            return f"lists a shard whose name {problem}"
        if (
            not is_count(shard.get("samples"))
            or not is_count(shard.get("bytes", 0))
            or not isinstance(shard.get("sha256", ""), str)
        ):
            return f"has a bad entry for shard {shard['name']} (samples, bytes: counts; sha256: text)"
    guids = info.get("guids", [])
    if not isinstance(guids, list) or not all(isinstance(g, str) for g in guids):
        return "has 'guids' that is not a list of strings"
    counts = info.get("class_counts", {})
    if not isinstance(counts, dict) or not all(is_count(n) for n in counts.values()):
        return "has 'class_counts' that is not a mapping of counts"
    return None


def split_shards(manifest: dict, split: str, location: str) -> list[dict]:
    """One split's shard entries, in order; MsaDistError if the split is absent or empty."""
    splits = manifest["splits"]
    if split not in splits:
        have = ", ".join(splits) or "none"
        raise MsaDistError(f"split '{split}' is not in the manifest of {location} (splits: {have})")
    shards = splits[split].get("shards") or []
    if not shards:
        raise MsaDistError(f"split '{split}' in {location} has no shards ({splits[split].get('samples', 0)} samples)")
    return shards


def write_manifest(directory: str | Path, manifest: dict, table_above: int = TABLE_ABOVE_SHARDS) -> Path:
    """Write `manifest.json` atomically (temp file + os.replace) so readers never see half of it; a split of
    more than `table_above` shards goes to a binary shard table first (without its guids)."""
    out = {**manifest, "splits": {}}
    for split, info in manifest["splits"].items():
        info = dict(info)
        shards = info.get("shards")
        if isinstance(shards, ShardTable) or (shards is not None and len(shards) > table_above):
            data = to_table(shards)
            atomic.write_atomic(Path(directory) / table_reference(split, data, 0)["file"], data)
            fields = shards.fields if isinstance(shards, ShardTable) else index_fields(shards)
            info["shard_table"] = table_reference(split, data, len(shards), fields)
            info.pop("shards"), info.pop("guids", None)
        out["splits"][split] = info
    path = Path(directory) / MANIFEST_NAME
    return atomic.write_atomic(path, json.dumps(out, indent=1, ensure_ascii=False) + "\n")


def shard_urls(shard_dir: str | Path, split: str, manifest: dict | None = None) -> list[str]:
    """Absolute paths of one split's shards in a local folder, in order (for whole-shard readers)."""
    shard_dir = Path(shard_dir)
    shards = split_shards(manifest if manifest is not None else load_manifest(shard_dir), split, str(shard_dir))
    root = shard_dir.resolve()
    return [str(root / s["name"]) for s in shards]
