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
from dataclasses import dataclass, field
from typing import Iterator, Optional

from msa_dist.data.tario import _META_RE, _split_name, scan_members
from msa_dist.errors import MsaDistError

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
    fields: dict[str, list[Optional[list[int]]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def members(self, i: int) -> Iterator[tuple[str, int, int]]:
        """(field, offset, size) of sample i's members."""
        for name, column in self.fields.items():
            where = column[i]
            if where is not None:
                yield name, where[0], where[1]

    def to_json(self) -> bytes:
        return json.dumps({"format": INDEX_FORMAT, "shard": self.shard, "bytes": self.nbytes, "keys": self.keys,
                           "starts": self.starts, "ends": self.ends, "fields": self.fields},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> "ShardIndex":
        try:
            raw = json.loads(data)
            if raw.get("format") != INDEX_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, this version reads {INDEX_FORMAT}")
            index = cls(raw["shard"], raw["bytes"], raw["keys"], raw["starts"], raw["ends"], raw["fields"])
            n = len(index.keys)
            if len(index.starts) != n or len(index.ends) != n or any(len(c) != n for c in index.fields.values()):
                raise ValueError("columns of different lengths")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MsaDistError(f"{where} is not a valid shard index ({exc}): rebuild it with "
                               "`msa-dist shards index DIR`") from None
        return index


def scan_tar(data: bytes, shard: str) -> ShardIndex:
    """Index a tar held in memory; MsaDistError (one line) when it is not a readable tar."""
    index = ShardIndex(shard, len(data))
    row: dict[str, list[int]] = {}
    try:
        for name, start, offset, size in scan_members(io.BytesIO(data)):
            key, dot, suffix = _split_name(name)
            if not dot or _META_RE.match(name):
                continue
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
            index.ends[-1] = offset + size + (-size % 512)
    except (ValueError, OSError) as exc:  # tarfile.ReadError is an OSError
        raise MsaDistError(f"shard {shard} is not a readable tar: {exc}") from None
    _close_row(index, row)
    return index


def _close_row(index: ShardIndex, row: dict[str, list[int]]) -> None:
    """Put the finished sample's members into the columns (None where a field is missing)."""
    if not index.keys:
        return
    n = len(index.keys) - 1  # the sample `row` belongs to
    for name in row.keys() - index.fields.keys():
        index.fields[name] = [None] * n
    for name, column in index.fields.items():
        column.append(row.get(name))


def read_index(store, shard: str) -> ShardIndex:
    """A shard's index from its sidecar; MsaDistError naming the fix when it is missing."""
    name = index_name(shard)
    try:
        data = store.read(name)
    except MsaDistError:
        raise MsaDistError(f"shard {store.url(shard)} has no index ({name}): add indexes with "
                           f"`msa-dist shards index {store.location}`") from None
    return ShardIndex.from_json(data, store.url(name))
