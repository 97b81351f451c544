"""A split's shard list as a compact binary table (`SPLIT.shards.bin`), for splits of very many shards.

`manifest.json` lists each shard as a JSON entry: at 10^6 shards that parses into ~410 MiB of Python
objects in every process (1.8 s). A split of more than `TABLE_ABOVE_SHARDS` shards is written instead as
    "splits": {split: {"samples": n, ..., "shard_table": {"file": "train.shards.bin", "shards": S,
                       "bytes": size, "sha256": hex}}}       # no "shards" list and no "guids"
and this file, little-endian:
    header   "<8sQII": magic, shards S, name width w, flags (1: the index columns are there)
    samples  S x u4      bytes  S x u8      names  S x S{w} (UTF-8, zero-padded)
    [index_at S x u4     index_record S x u2]   where each binary index's records lie ("index_fields" in the
                                                manifest's reference: the field names, the same for every shard)
    sha256   S x 32 bytes
Opening it reads the header and the columns before the checksums (one read or one ranged request: 18 + w
bytes a shard, 32 MB at 10^6 shards of 17-character names) as numpy views; the checksums, needed only to
verify shards, are read a page at a time when asked for. `ShardTable` reads like the list of entries it
replaces (len, index, iteration: entries built on demand), and gives the loader its columns whole
(`samples`, `nbytes`), so no per-shard Python object stays in memory. Today's manifests, with "shards"
lists, are read as before.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence

import numpy as np

from msa_dist.common.errors import MsaDistError

TABLE_SUFFIX = ".shards.bin"
TABLE_ABOVE_SHARDS = 10_000  # write_manifest writes a split of more shards than this as a table
MAGIC = b"MSASHT\x00\x01"
_HEADER = struct.Struct("<8sQII")
_PAGE = 4096  # checksums read at a time


def table_name(split: str) -> str:
    return split + TABLE_SUFFIX


def index_fields(shards: Sequence[dict]) -> list[str] | None:
    """The field names every entry's "index" layout shares, or None (then the table has no index columns)."""
    layouts = [s.get("index") for s in shards]
    if not layouts or not all(isinstance(x, dict) and x.get("fields") == layouts[0]["fields"] for x in layouts):
        return None
    return list(layouts[0]["fields"])


def to_table(shards: Sequence[dict]) -> bytes:
    """The binary table of a list of shard entries (name, samples, bytes, sha256, index layout)."""
    layout = None
    if index_fields(shards) is not None:
        layout = ([s["index"]["at"] for s in shards], [s["index"]["record"] for s in shards])
    return pack_table(
        np.asarray([s["name"].encode("utf-8") for s in shards]),
        shard_column(shards, "samples"),
        shard_column(shards, "bytes"),
        b"".join(bytes.fromhex(s.get("sha256") or "00" * 32) for s in shards),
        layout,
    )


def pack_table(names: np.ndarray, samples, nbytes, digests: bytes, layout=None) -> bytes:
    """The table's bytes from its columns (names: a numpy bytes array; digests: 32 bytes a shard; layout:
    (index_at, index_record) columns, or None)."""
    if len(digests) != 32 * len(names) or np.asarray(samples).max(initial=0) >= 1 << 32:
        raise ValueError("a shard table needs 32-byte checksums and fewer than 2^32 samples a shard")
    width = max(1, names.dtype.itemsize)
    columns = [np.asarray(samples, "<u4").tobytes(), np.asarray(nbytes, "<u8").tobytes()]
    columns.append(names.astype(f"S{width}").tobytes())
    if layout is not None:
        columns += [np.asarray(layout[0], "<u4").tobytes(), np.asarray(layout[1], "<u2").tobytes()]
    return b"".join([_HEADER.pack(MAGIC, len(names), width, int(layout is not None)), *columns, digests])


def table_reference(split: str, data: bytes, shards: int, fields: list[str] | None = None) -> dict:
    """The manifest's "shard_table" entry for table bytes `data` (`fields`: its index columns' field names)."""
    reference = {"file": table_name(split), "shards": shards, "bytes": len(data)}
    reference["sha256"] = hashlib.sha256(data).hexdigest()
    return reference if fields is None else {**reference, "index_fields": fields}


class ShardTable(Sequence):
    """A split's shards from a binary table: columns as arrays, entries (dicts) built on demand."""

    def __init__(self, store, reference: dict):
        self.store, self.file = store, reference["file"]
        where = store.url(self.file)
        shards = int(reference["shards"])
        head = self._read(0, _HEADER.size)
        try:
            magic, count, width, flags = _HEADER.unpack(head)
        except struct.error:
            raise MsaDistError(f"{where} is cut short: rebuild the shards' manifest") from None
        self.fields = reference.get("index_fields") if flags & 1 else None
        if magic != MAGIC or count != shards or not 0 < width <= 4096 or (flags & 1 and not self.fields):
            raise MsaDistError(f"{where} is not the shard table the manifest names ({shards} shards)")
        self._sha_at = _HEADER.size + count * (12 + width + 6 * (flags & 1))
        if reference.get("bytes") not in (None, self._sha_at + 32 * count):
            raise MsaDistError(f"{where} does not have the size the manifest gives: rebuild the manifest")
        body = self._read(_HEADER.size, self._sha_at)
        # views of the one buffer read (read-only): 12 + w bytes a shard, nothing more
        self.samples = np.frombuffer(body, "<u4", count, 0)
        self.nbytes = np.frombuffer(body, "<u8", count, 4 * count)
        self.names = np.frombuffer(body, f"S{width}", count, 12 * count)
        if self.fields:
            self.index_at = np.frombuffer(body, "<u4", count, (12 + width) * count)
            self.index_record = np.frombuffer(body, "<u2", count, (16 + width) * count)
        self._pages: dict[int, bytes] = {}

    def _read(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the table; MsaDistError if it is shorter."""
        try:
            data = self.store.read_range(self.file, start, end)
        except OSError:  # a local file cut short
            data = b""
        if len(data) != end - start:
            raise MsaDistError(f"{self.store.url(self.file)} is cut short: rebuild the shards' manifest")
        return data

    def __len__(self) -> int:
        return len(self.samples)

    def _sha(self, i: int) -> str:
        page = i // _PAGE
        if page not in self._pages:
            if len(self._pages) >= 4:
                self._pages.pop(next(iter(self._pages)))
            start = self._sha_at + 32 * page * _PAGE
            self._pages[page] = self._read(start, start + 32 * min(_PAGE, len(self) - page * _PAGE))
        return self._pages[page][32 * (i % _PAGE) : 32 * (i % _PAGE + 1)].hex()

    def name(self, i: int) -> str:
        return self.names[i].decode("utf-8", "replace")

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        entry = _Entry(self, i, name=self.name(i), samples=int(self.samples[i]), bytes=int(self.nbytes[i]))
        if self.fields:
            entry["index"] = {"at": int(self.index_at[i]), "record": int(self.index_record[i]), "fields": self.fields}
        return entry

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    @property
    def memory_bytes(self) -> int:
        return self._sha_at + sum(map(len, self._pages.values()))


class _Entry(dict):
    """One shard's entry; its checksum is read from the table when first asked for (verification)."""

    def __init__(self, table: ShardTable, i: int, **fields):
        super().__init__(**fields)
        self._table, self._i = table, i

    def __missing__(self, key):
        if key != "sha256":
            raise KeyError(key)
        self["sha256"] = value = self._table._sha(self._i)
        return value

    def get(self, key, default=None):
        return self[key] if key == "sha256" or key in self else default


def shard_column(shards, key: str) -> np.ndarray:
    """One count column ("samples" or "bytes") of a split's shards: a table's array, or a list's values."""
    if isinstance(shards, ShardTable):
        return (shards.samples if key == "samples" else shards.nbytes).astype(np.int64)
    return np.asarray([s.get(key, 0) for s in shards], dtype=np.int64)
