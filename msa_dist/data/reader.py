"""Reading samples of a split by id with ranged reads: only the bytes of the samples asked for.

`ShardSet` is a shard location (folder or URL) with its manifest; `SampleReader` maps a split's
sample ids (0..N-1 in shard order) to shards through their indexes, groups the ids of one shard
into runs of consecutive samples and fetches each run in one request.
"""
from __future__ import annotations

import hashlib
from typing import Iterator, Optional

import numpy as np

from msa_dist.data.index import ShardIndex, read_index
from msa_dist.data.manifest import MANIFEST_NAME, check_manifest, split_shards
from msa_dist.data.storage import ShardStore, open_store
from msa_dist.errors import MsaDistError


class ShardSet:
    """A shard set (local folder, file://, http(s)://, fsspec URL) and its manifest, read once."""

    def __init__(self, location: str):
        self.location = str(location)
        self.store: ShardStore = open_store(self.location)
        try:
            raw = self.store.read(MANIFEST_NAME)
        except MsaDistError:
            raise MsaDistError(f"no {MANIFEST_NAME} at {self.location}: build shards with `msa-dist shards build "
                               f"DATA_ROOT --out DIR` or index a webdataset set with `msa-dist shards index DIR`") from None
        self.manifest = check_manifest(raw, self.store.url(MANIFEST_NAME))
        self.store.check_ranges(MANIFEST_NAME)  # e.g. a web server without Range support: say so before any worker starts
        self.manifest_sha256 = hashlib.sha256(raw).hexdigest()
        self._indexes: dict[str, ShardIndex] = {}

    def shards(self, split: str) -> list[dict]:
        """The split's shard entries (name, samples, ...); MsaDistError if absent or empty."""
        return split_shards(self.manifest, split, self.location)

    def samples(self, split: str) -> int:
        return int(self.manifest["splits"][split]["samples"]) if split in self.manifest["splits"] else 0

    def index(self, shard: dict) -> ShardIndex:
        """A shard's index (read once), checked against the manifest's sample count."""
        name = shard["name"]
        if name not in self._indexes:
            index = read_index(self.store, name)
            if len(index) != shard["samples"]:
                raise MsaDistError(f"index of {self.store.url(name)} lists {len(index)} samples, the manifest "
                                   f"{shard['samples']}: run `msa-dist shards index {self.location}` again")
            self._indexes[name] = index
        return self._indexes[name]


class SampleReader:
    """Raw samples of one split by id: {"__key__": key, field: bytes, ...}, as webdataset gives them."""

    def __init__(self, shard_set: ShardSet, split: str):
        self.shard_set, self.split = shard_set, split
        self.shards = shard_set.shards(split)
        self.sizes = [int(s["samples"]) for s in self.shards]
        self._first_id = np.concatenate([[0], np.cumsum(self.sizes)])

    def fetch(self, ids: np.ndarray) -> list[dict | Exception]:
        """The samples `ids`, in that order; a sample whose run could not be read is the exception."""
        ids = np.asarray(ids, dtype=np.int64)
        shard_of = np.searchsorted(self._first_id, ids, side="right") - 1
        out: list[Optional[dict | Exception]] = [None] * len(ids)
        for s in np.unique(shard_of):
            where = np.flatnonzero(shard_of == s)
            local = ids[where] - self._first_id[s]
            by_local = sorted(zip(local.tolist(), where.tolist()))
            for run in self._runs(self.shard_set.index(self.shards[s]), by_local):
                self._read_run(self.shards[s]["name"], run, out)
        return out

    @staticmethod
    def _runs(index: ShardIndex, by_local: list[tuple[int, int]]) -> Iterator[tuple[ShardIndex, list]]:
        """Runs of samples that lie back to back in the tar (one request each)."""
        run: list[tuple[int, int]] = []
        for i, slot in by_local:
            if run and not (i == run[-1][0] + 1 and index.starts[i] == index.ends[run[-1][0]]):
                yield index, run
                run = []
            run.append((i, slot))
        if run:
            yield index, run

    def _read_run(self, name: str, index_run: tuple[ShardIndex, list], out: list) -> None:
        index, run = index_run
        base, end = index.starts[run[0][0]], index.ends[run[-1][0]]
        try:
            data = self.shard_set.store.read_range(name, base, end)
        except OSError as exc:  # a short read or a failed request: these samples are reported and skipped
            # (an MsaDistError, e.g. a server that ignores Range requests, ends the run in one line)
            for _, slot in run:
                out[slot] = exc
            return
        for i, slot in run:
            sample = {"__key__": index.keys[i], "__url__": self.shard_set.store.url(name)}
            for field, offset, size in index.members(i):
                sample[field] = data[offset - base:offset - base + size]
            out[slot] = sample

    def texts(self) -> Iterator[str]:
        """Every `txt` member of the split, in shard order: one small read each, nothing else."""
        store = self.shard_set.store
        for shard in self.shards:
            index = self.shard_set.index(shard)
            column = index.fields.get("txt") or [None] * len(index)
            for where in column:
                if where is not None:
                    yield store.read_range(shard["name"], where[0], where[0] + where[1]).decode("utf-8")
