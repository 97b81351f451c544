"""A sample index per shard: where each sample and each of its members lies inside the tar.

Sidecar `NAME.tar.idx.json` next to each shard (the tar itself is untouched, so any webdataset
tool still reads it):
    {"format": 1, "shard": "train-000000.tar", "bytes": <tar size>,
     "keys": [key, ...],                      # one per sample, in tar order
     "starts": [...], "ends": [...],          # the sample's bytes [start, end): headers + data + padding
     "fields": {"jpg": [[offset, size] | null, ...], "txt": [...], ...}}   # each member's data
Samples are grouped as webdataset groups them (consecutive members with one key). Reading
samples i..j of a shard is then one ranged read [starts[i], ends[j]); reading only texts is
one small read per `txt` member.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from msa_dist.common.errors import MsaDistError
from msa_dist.common.limits import MAX_INDEX_BYTES, MAX_SAMPLE_BYTES, is_count
from msa_dist.data.format.tario import _META_RE, _split_name, scan_members

INDEX_FORMAT = 1
INDEX_SUFFIX = ".idx.json"


def index_name(shard_name: str) -> str:
    """The sidecar of a shard: `train-000000.tar` -> `train-000000.tar.idx.json`."""
    return shard_name + INDEX_SUFFIX


@dataclass
class ShardIndex:
    """The samples of one shard: keys, byte ranges, and each member's (offset, size)."""

    shard: str
    nbytes: int
    keys: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    fields: dict[str, list[list[int] | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def members(self, i: int) -> Iterator[tuple[str, int, int]]:
        """(field, offset, size) of sample i's members."""
        for name, column in self.fields.items():
            where = column[i]
            if where is not None:
                yield name, where[0], where[1]

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": INDEX_FORMAT,
                "shard": self.shard,
                "bytes": self.nbytes,
                "keys": self.keys,
                "starts": self.starts,
                "ends": self.ends,
                "fields": self.fields,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> ShardIndex:
        try:
            raw = json.loads(data)
            if raw.get("format") != INDEX_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, this version reads {INDEX_FORMAT}")
            index = cls(raw["shard"], raw["bytes"], raw["keys"], raw["starts"], raw["ends"], raw["fields"])
            check_index(index)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise MsaDistError(
                f"{where} is not a valid shard index ({exc}): rebuild it with `msa-dist shards index DIR`"
            ) from None
        return index


def check_index(index: ShardIndex) -> None:
    """ValueError unless every range lies inside the shard's `nbytes`: 0 <= start <= member offset,
    offset + size <= end <= nbytes for every sample, so no read goes before or past the file; and no
    sample spans more than MAX_SAMPLE_BYTES (the shard's real size is not known to every store)."""
    if not isinstance(index.shard, str) or not is_count(index.nbytes):
        raise ValueError("'shard' must be a name and 'bytes' a count")
    # printable: a key or field name holds no newline (the binary index's separator) and no surrogate
    if not isinstance(index.keys, list) or not all(isinstance(k, str) and k.isprintable() for k in index.keys):
        raise ValueError("'keys' must be a list of printable strings")
    n = len(index.keys)
    if (
        not isinstance(index.fields, dict)
        or not all(isinstance(c, list) for c in index.fields.values())
        or not all(name and name.isprintable() for name in index.fields)
    ):
        raise ValueError("'fields' must map printable names to lists")
    if (
        not isinstance(index.starts, list)
        or not isinstance(index.ends, list)
        or len(index.starts) != n
        or len(index.ends) != n
        or any(len(c) != n for c in index.fields.values())
    ):
        raise ValueError("columns of different lengths")
    for i, (start, end) in enumerate(zip(index.starts, index.ends)):
        if not (is_count(start) and is_count(end) and start < end <= index.nbytes):
            raise ValueError(f"sample {i} spans [{start!r}, {end!r}), outside the shard's {index.nbytes} bytes")
        if end - start > MAX_SAMPLE_BYTES:
            raise ValueError(f"sample {i} spans {end - start} bytes, more than the {MAX_SAMPLE_BYTES} a sample may")
    for name, column in index.fields.items():
        for i, where in enumerate(column):
            if where is None:
                continue
            if not (
                isinstance(where, list)
                and len(where) == 2
                and is_count(where[0])
                and is_count(where[1])
                and index.starts[i] <= where[0]
                and where[0] + where[1] <= index.ends[i]
            ):
                raise ValueError(f"member {name} of sample {i} at {where!r} lies outside its sample")


def scan_tar(data: bytes, shard: str) -> ShardIndex:
    """Index a tar held in memory; MsaDistError (one line) when it is not a readable tar."""
    index = ShardIndex(shard, len(data))
    row: dict[str, list[int]] = {}
    try:
        for name, start, offset, size in scan_members(io.BytesIO(data)):
            key, dot, suffix = _split_name(name)
            if not dot or _META_RE.match(name):
                continue
            if not name.isprintable():  # also catches bytes that are not UTF-8 (decoded as surrogates)
                raise ValueError(f"member name {name[:80]!r} is not printable UTF-8 text")
            if offset + size > len(data):
                raise ValueError(f"member {name} runs past the end of the file (truncated shard?)")
            if not index.keys or index.keys[-1] != key:
                _close_row(index, row)
                index.keys.append(key)
                index.starts.append(start)
                index.ends.append(0)
                row = {}
            if suffix in row:
                raise ValueError(f"{name}: duplicate file name")
            row[suffix] = [offset, size]
            index.ends[-1] = min(offset + size + (-size % 512), len(data))  # a tar may lack its last padding
    except (ValueError, OSError, tarfile.TarError) as exc:
        raise MsaDistError(f"shard {shard} is not a readable tar: {exc}") from None
    _close_row(index, row)
    try:
        check_index(index)  # e.g. a sample larger than MAX_SAMPLE_BYTES: refused here, not when read back
    except ValueError as exc:
        raise MsaDistError(f"shard {shard} cannot be indexed: {exc}") from None
    return index


def _close_row(index: ShardIndex, row: dict[str, list[int]]) -> None:
    """Put the finished sample's members into the columns (None where a field is missing)."""
    if not index.keys:
        return
    n = len(index.keys) - 1  # the sample `row` belongs to
    for name in sorted(row.keys() - index.fields.keys()):  # sorted: the same bytes under any hash seed
        index.fields[name] = [None] * n
    for name, column in index.fields.items():
        column.append(row.get(name))


def read_index(store, shard: str) -> ShardIndex:
    """A shard's index from its sidecar, checked against the shard's size where the store can tell
    it cheaply (a local file's size; fsspec's); MsaDistError naming the fix when it is missing or stale."""
    from msa_dist.data.stores import MissingFile

    name = index_name(shard)
    local = getattr(store, "root", None)  # a local folder: a FIFO there would block the read
    if local is not None and (local / name).exists() and not (local / name).is_file():
        raise MsaDistError(f"{store.url(name)} is not a regular file")
    try:
        data = store.read(name, MAX_INDEX_BYTES)
    except MissingFile:
        raise MsaDistError(
            f"shard {store.url(shard)} has no index ({name}): add indexes with `msa-dist shards index {store.location}`"
        ) from None
    index = ShardIndex.from_json(data, store.url(name))
    size = shard_size(store, shard)
    if size is not None and size != index.nbytes:
        raise MsaDistError(
            f"the index of {store.url(shard)} is for a shard of {index.nbytes} bytes, the shard has "
            f"{size}: run `msa-dist shards index {store.location}` again"
        )
    return index


def shard_size(store, shard: str) -> int | None:
    """The shard's size in bytes; None where asking would cost a request (HTTP). MsaDistError if it is
    missing or not a regular file."""
    from msa_dist.data.stores import FsspecStore, LocalStore

    try:
        if isinstance(store, LocalStore):
            info = os.stat(store.root / shard)
            if not stat.S_ISREG(info.st_mode):
                raise MsaDistError(f"shard {store.url(shard)} is not a regular file")
            return info.st_size
        if isinstance(store, FsspecStore):
            return int(store._fs_handle().size(store.url(shard)))
    except (FileNotFoundError, NotADirectoryError):
        raise MsaDistError(f"shard {store.url(shard)} does not exist") from None
    except (OSError, TypeError, ValueError) as exc:
        raise MsaDistError(f"cannot stat shard {store.url(shard)}: {exc}") from None
    return None
