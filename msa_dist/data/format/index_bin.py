"""The compact binary shard index (`NAME.tar.idx.bin`) and a bounded cache of loaded indexes.

A JSON sidecar (index.py) parsed into Python lists costs about 530 bytes per sample; this form
holds the same facts in one fixed-width record per sample (16 + 8 x fields + key-width bytes,
about 56 for jpg/txt/cls and short keys), read with numpy: a local file with one read into the
records' own memory, a remote one with one request. Not memory-mapped: a mapped file truncated by
someone else kills the process with SIGBUS on the next access (or, within the last page, gives
zeros), and only private memory is safe from that. The cost stays bounded: at most
MAX_INDEX_BYTES a file, INDEX_CACHE_BYTES of records a process (the indexes read before the loader
workers fork are shared with them, copy-on-write); lost is the sharing between a node's ranks
through the page cache. Layout, little-endian:
    header  "<8sIIIIQ": magic, samples n, fields f, key width w, names length m, tar bytes
    names   m bytes of UTF-8: the shard name and the f field names, "\\n"-joined; zero-padded to 8
    records n x {start i8, end i8, (offset u4, size u4) x f, key S{w}}   # offset from the sample's start;
            size 0xFFFFFFFF: the sample has no such member
`shards build` and `shards index` write it beside the JSON sidecar; a shard set with JSON sidecars
alone is read as before (converted to this form in memory). `load_index` prefers the binary form.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from msa_dist.common.errors import MsaDistError
from msa_dist.common.limits import MAX_INDEX_BYTES, MAX_SAMPLE_BYTES
from msa_dist.data.format.index import ShardIndex, read_index
from msa_dist.data.format.shard_table import shard_column

BINARY_SUFFIX = ".idx.bin"
MAGIC = b"MSAIDX\x00\x01"
_HEADER = struct.Struct("<8sIIIIQ")
_ABSENT = 0xFFFFFFFF
INDEX_CACHE_BYTES = 64 << 20  # loaded index records one process keeps (least recently used go first)
_JSON_ONLY: set[str] = set()  # remote locations seen without a binary sidecar: one request per index, not two


def binary_name(shard_name: str) -> str:
    """`train-000000.tar` -> `train-000000.tar.idx.bin`."""
    return shard_name + BINARY_SUFFIX


def _dtype(fields: int, key_width: int) -> np.dtype:
    columns = [("start", "<i8"), ("end", "<i8")]
    for j in range(fields):
        columns += [(f"o{j}", "<u4"), (f"s{j}", "<u4")]
    return np.dtype(columns + [("key", f"S{key_width}")])


def to_binary(index: ShardIndex) -> bytes:
    """The binary form of an index (ValueError if a sample is 4 GiB or more)."""
    names = list(index.fields)
    keys = [k.encode("utf-8") for k in index.keys]
    records = np.zeros(len(keys), _dtype(len(names), max([1, *map(len, keys)])))
    records["start"], records["end"], records["key"] = index.starts, index.ends, keys
    starts = np.asarray(index.starts, dtype=np.int64)
    for j, name in enumerate(names):
        where = index.fields[name]
        present = np.array([w is not None for w in where], dtype=bool)
        offsets = np.array([w[0] if w is not None else 0 for w in where], dtype=np.int64) - starts
        sizes = np.array([w[1] if w is not None else 0 for w in where], dtype=np.int64)
        if present.any() and (offsets[present].max() >= _ABSENT or sizes[present].max() >= _ABSENT):
            raise ValueError(f"{index.shard}: a sample of 4 GiB or more does not fit the binary index")
        records[f"o{j}"] = np.where(present, offsets, 0)
        records[f"s{j}"] = np.where(present, sizes, _ABSENT)
    blob = "\n".join([index.shard, *names]).encode("utf-8")
    header = _HEADER.pack(MAGIC, len(keys), len(names), records.dtype["key"].itemsize, len(blob), index.nbytes)
    return header + blob + b"\0" * (-len(blob) % 8) + records.tobytes()


class _Column:
    """A read-only sequence over one record column (Python ints, strs or member places)."""

    def __init__(self, n: int, get):
        self._n, self._get = n, get

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int):
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return self._get(i)

    def __iter__(self) -> Iterator:
        return (self._get(i) for i in range(self._n))


class CompactIndex:
    """A shard's index as fixed-width records; reads like `ShardIndex` (keys, starts, ends, fields,
    members) without Python objects per sample."""

    def __init__(self, shard: str, nbytes: int, names: list[str], records: np.ndarray):
        self.shard, self.nbytes, self.names, self.records = shard, nbytes, names, records
        n = len(records)
        self.keys = _Column(n, lambda i: records["key"][i].decode("utf-8", "replace"))  # corrupt bytes: no traceback
        self.starts = _Column(n, lambda i: int(records["start"][i]))
        self.ends = _Column(n, lambda i: int(records["end"][i]))
        self.fields = {name: _Column(n, lambda i, j=j: self._member(i, j)) for j, name in enumerate(names)}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def memory_bytes(self) -> int:
        return self.records.nbytes

    def _member(self, i: int, j: int) -> list[int] | None:
        record = self.records[i]
        size = int(record[f"s{j}"])
        return None if size == _ABSENT else [int(record["start"]) + int(record[f"o{j}"]), size]

    def members(self, i: int) -> Iterator[tuple[str, int, int]]:
        """(field, offset, size) of sample i's members."""
        record = self.records[i]
        start = int(record["start"])
        for j, name in enumerate(self.names):
            size = int(record[f"s{j}"])
            if size != _ABSENT:
                yield name, start + int(record[f"o{j}"]), size

    def check(self) -> CompactIndex:
        """ValueError unless every sample and member lies inside the shard's bytes (vectorised)."""
        r = self.records
        if len(r) and not ((r["start"] >= 0) & (r["start"] < r["end"]) & (r["end"] <= self.nbytes)).all():
            raise ValueError(f"a sample's range lies outside the shard's {self.nbytes} bytes")
        if len(r) and (r["end"] - r["start"] > MAX_SAMPLE_BYTES).any():
            raise ValueError(f"a sample spans more than the {MAX_SAMPLE_BYTES} bytes a sample may")
        for j, name in enumerate(self.names):
            present = r[f"s{j}"] != _ABSENT
            end = r["start"][present] + r[f"o{j}"][present].astype(np.int64) + r[f"s{j}"][present]
            if (end > r["end"][present]).any():
                raise ValueError(f"a {name} member lies outside its sample")
        return self

    def to_shard_index(self) -> ShardIndex:
        """The same facts as a `ShardIndex` (Python lists: for checks, not for a large split)."""
        return ShardIndex(
            self.shard,
            self.nbytes,
            list(self.keys),
            list(self.starts),
            list(self.ends),
            {name: list(column) for name, column in self.fields.items()},
        )

    def __reduce__(self):  # the columns are closures: rebuild them (a spawned worker gets a copy)
        return CompactIndex, (self.shard, self.nbytes, self.names, np.asarray(self.records))

    @classmethod
    def from_shard_index(cls, index: ShardIndex) -> CompactIndex:
        return cls.parse(to_binary(index), index.shard)

    @classmethod
    def parse(cls, data: bytes, where: str, records_from=None, size: int | None = None) -> CompactIndex:
        """Parse the binary form: `data` holds it all, or (with `records_from`, a local file of `size`
        bytes positioned after the names' padding) at least its header and names, and the records are
        read from that file into their own memory."""
        try:
            magic, n, fields, width, blob_len, nbytes = _HEADER.unpack_from(data, 0)
            if magic != MAGIC:
                raise ValueError("not an msa-dist binary index")
            shard, *names = bytes(data[_HEADER.size : _HEADER.size + blob_len]).decode("utf-8").split("\n")
            if len(names) != fields:  # before building a dtype of `fields` columns: a crafted count stays harmless
                raise ValueError("truncated or inconsistent")
            dtype, offset = _dtype(fields, width), _HEADER.size + blob_len + (-blob_len % 8)
            if (len(data) if size is None else size) != offset + n * dtype.itemsize:
                raise ValueError("truncated or inconsistent")
            if records_from is not None and n:
                records = np.empty(n, dtype)
                # one read into the records' memory: a file cut short meanwhile is a short read, not a SIGBUS
                if records_from.readinto(memoryview(records).cast("B")) != records.nbytes:
                    raise ValueError("truncated while read")
            else:
                records = np.frombuffer(data, dtype, n, offset) if n else np.zeros(0, dtype)
            return cls(shard, nbytes, names, records).check()
        except (ValueError, TypeError, struct.error, UnicodeDecodeError) as exc:  # TypeError: a key width numpy refuses
            raise MsaDistError(
                f"{where} is not a valid shard index ({exc}): rebuild it with `msa-dist shards index DIR`"
            ) from None


def records_layout(binary: bytes) -> dict:
    """Where a binary index's records lie, for the manifest's shard entry ("index"): their offset, the bytes
    of one record and the field names, so a reader can fetch the records of samples [lo, hi) alone."""
    _, _, _, width, blob_len, _ = _HEADER.unpack_from(binary, 0)
    names = bytes(binary[_HEADER.size : _HEADER.size + blob_len]).decode("utf-8").split("\n")[1:]
    at = _HEADER.size + blob_len + (-blob_len % 8)
    return {"at": at, "record": _dtype(len(names), width).itemsize, "fields": names}


def read_records(store, shard: dict, lo: int, hi: int) -> CompactIndex | None:
    """The index records of samples [lo, hi) of `shard` (a manifest entry), in one ranged read of its binary
    sidecar; record i of the result is sample lo + i. None when the entry does not say where they lie."""
    layout = shard.get("index")
    if not isinstance(layout, dict):
        return None
    name, where = shard["name"], store.url(binary_name(shard["name"]))
    try:
        fields, at, record = [str(f) for f in layout["fields"]], int(layout["at"]), int(layout["record"])
        dtype = _dtype(len(fields), record - 16 - 8 * len(fields))
        if at < _HEADER.size or dtype.itemsize != record or not 0 <= lo <= hi <= int(shard["samples"]):
            raise ValueError("inconsistent")
    except (KeyError, TypeError, ValueError):
        raise MsaDistError(f"the manifest's index entry for {name} is not valid: run `msa-dist shards index`") from None
    data = store.read_range(binary_name(name), at + lo * record, at + hi * record)
    if len(data) != (hi - lo) * record:
        raise MsaDistError(f"{where} is shorter than the manifest says: run `msa-dist shards index` again")
    records = np.frombuffer(data, dtype, hi - lo) if hi > lo else np.zeros(0, dtype)
    try:
        return CompactIndex(name, int(shard.get("bytes") or 0) or 1 << 62, fields, records).check()
    except ValueError as exc:
        raise MsaDistError(
            f"{where} is not a valid shard index ({exc}): rebuild it with `msa-dist shards index`"
        ) from None


def _open_local(store, shard: str) -> CompactIndex | None:
    """A local binary sidecar, read into memory (not mapped: see above); None if there is none."""
    path, where = store.root / binary_name(shard), store.url(binary_name(shard))
    try:
        # O_NONBLOCK and a regular-file check: a FIFO named like a sidecar must not block the loader
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MsaDistError(f"{path} is not a regular file: remove it and run `msa-dist shards index` again")
        if info.st_size > MAX_INDEX_BYTES:
            raise MsaDistError(f"{where}: {info.st_size} bytes, more than the {MAX_INDEX_BYTES} an index may hold")
        head = f.read(_HEADER.size)
        blob_len = _HEADER.unpack(head)[4] if len(head) == _HEADER.size else 0
        head += f.read(min(blob_len + (-blob_len % 8), info.st_size))  # a crafted length reads no more than the file
        index = CompactIndex.parse(head, where, f, info.st_size)
    tar = store.root / shard
    if tar.is_file() and tar.stat().st_size != index.nbytes:  # a shard rewritten after its index was
        raise MsaDistError(
            f"the index of {store.url(shard)} is for a shard of {index.nbytes} bytes, the shard has "
            f"{tar.stat().st_size}: run `msa-dist shards index {store.location}` again"
        )
    return index


def load_index(store, shard: str) -> CompactIndex:
    """A shard's index: the binary sidecar if there is one, else the JSON one."""
    from msa_dist.data.stores import LocalStore, MissingFile

    if isinstance(store, LocalStore):
        index = _open_local(store, shard)
        return index if index is not None else CompactIndex.from_shard_index(read_index(store, shard))
    if store.location not in _JSON_ONLY:
        try:
            return CompactIndex.parse(store.read(binary_name(shard), MAX_INDEX_BYTES), store.url(binary_name(shard)))
        except MissingFile:  # a set indexed before binary sidecars: ask for JSON alone from now on
            _JSON_ONLY.add(store.location)
    return CompactIndex.from_shard_index(read_index(store, shard))


class IndexCache(OrderedDict):
    """Loaded indexes by shard name, least recently used dropped past `max_bytes` of records (the
    latest one always stays). Safe to share between a process's reading threads."""

    def __init__(self, max_bytes: int = INDEX_CACHE_BYTES):
        super().__init__()
        self.max_bytes, self.held_bytes, self._largest = max_bytes, 0, 0
        self._lock = threading.Lock()

    def get(self, name: str, default=None) -> CompactIndex | None:
        """The index of `name` (now the most recently used), or `default`."""
        with self._lock:
            if name not in self:
                return default
            self.move_to_end(name)
            return super().__getitem__(name)

    def __setitem__(self, name: str, index: CompactIndex) -> None:
        with self._lock:
            if name in self:
                self.held_bytes -= super().__getitem__(name).memory_bytes
            super().__setitem__(name, index)
            self.held_bytes += index.memory_bytes
            self._largest = max(self._largest, index.memory_bytes)
            while self.held_bytes > self.max_bytes and len(self) > 1:
                _, dropped = self.popitem(last=False)
                self.held_bytes -= dropped.memory_bytes

    def full(self) -> bool:
        """True once another index as large as the largest so far would drop the oldest."""
        return self.held_bytes + self._largest > self.max_bytes

    def __getstate__(self):  # a spawned worker gets the indexes and a fresh lock
        return {"max_bytes": self.max_bytes, "held_bytes": self.held_bytes, "_largest": self._largest}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())


def shards_to_preload(shard_set, shards: list[dict]) -> list[dict]:
    """The shards whose indexes to read before loader workers fork (they inherit them, and a manifest
    that disagrees with an index fails at once): all of them when the split's indexes fit one
    process's cache, else the first alone (at scale each worker reads the indexes it meets)."""
    if not shards:
        return []
    first = shard_set.index(shards[0])
    cache = getattr(shard_set, "_indexes", None)
    limit = cache.max_bytes if isinstance(cache, IndexCache) else INDEX_CACHE_BYTES
    split_bytes = first.memory_bytes / max(1, len(first)) * int(shard_column(shards, "samples").sum())
    return shards if split_bytes <= limit else shards[:1]
