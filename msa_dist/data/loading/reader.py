"""Reading samples of a split by id with ranged reads: only the bytes of the samples asked for.

`ShardSet` is a shard location (folder or URL) with its manifest; `SampleReader` maps a split's
sample ids (0..N-1 in shard order) to shards through their indexes, groups the ids of one shard
into runs of consecutive samples and fetches each run in one request (`fetch`), or keeps the
requests of the next batches in flight (`read_ahead`, readahead.py).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import multiprocessing
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from msa_dist.common.errors import MsaDistError
from msa_dist.common.urls import redact_url
from msa_dist.data.format.index import ShardIndex
from msa_dist.data.format.index_bin import IndexCache, load_index
from msa_dist.data.format.manifest import MANIFEST_NAME, attach_tables, check_manifest, split_shards
from msa_dist.data.format.shard_table import shard_column
from msa_dist.data.loading.readahead import ReadAhead, ReadPool, Run
from msa_dist.data.stores import MissingFile, ShardStore, open_store


class ShardSet:
    """A shard set (local folder, file://, http(s)://, fsspec URL) and its manifest, read once."""

    def __init__(self, location: str):
        self.store: ShardStore = open_store(str(location))
        self.location = redact_url(str(location))  # for messages: a URL's secrets stay in the store
        try:
            raw = self.store.read(MANIFEST_NAME)
        except MissingFile:
            raise MsaDistError(
                f"no {MANIFEST_NAME} at {self.location}: build shards with `msa-dist shards build "
                f"DATA_ROOT --out DIR` or index a webdataset set with `msa-dist shards index DIR`"
            ) from None
        self.manifest = attach_tables(check_manifest(raw, self.store.url(MANIFEST_NAME)), self.store)
        self.store.check_ranges(
            MANIFEST_NAME
        )  # e.g. a web server without Range support: say so before any worker starts
        self.manifest_sha256 = hashlib.sha256(raw).hexdigest()
        self._indexes = IndexCache()  # bounded: the least recently used go (index_bin.py)
        self._loading: dict[str, threading.Lock] = {}  # an index being read: other threads wait for it
        self._loading_lock = threading.Lock()

    def __getstate__(self):  # a spawned worker: fresh locks
        return {k: v for k, v in self.__dict__.items() if k not in ("_loading", "_loading_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state, _loading={}, _loading_lock=threading.Lock())

    def shards(self, split: str) -> list[dict]:
        """The split's shard entries (name, samples, ...); MsaDistError if absent or empty."""
        return split_shards(self.manifest, split, self.location)

    def samples(self, split: str) -> int:
        return int(self.manifest["splits"][split]["samples"]) if split in self.manifest["splits"] else 0

    def preload(self, shards: list[dict], threads: int = 16) -> None:
        """Read the indexes of `shards` not read yet, `threads` requests at a time."""
        missing = list({s["name"]: s for s in shards if s["name"] not in self._indexes}.values())
        if len(missing) > 1:
            with ThreadPoolExecutor(min(threads, len(missing))) as pool:
                list(pool.map(self.index, missing))
        for shard in missing:
            self.index(shard)

    def cached(self, name: str):
        """The index of shard `name` if this process holds it (nothing is read)."""
        return self._indexes.get(name)

    def index(self, shard: dict) -> ShardIndex:
        """A shard's index (read once), checked against the manifest's sample count."""
        name = shard["name"]
        index = self._indexes.get(name)
        if index is not None:
            return index
        with self._loading_lock:  # one read per index: two blocks of a shard read at once wait for one
            lock = self._loading.setdefault(name, threading.Lock())
        try:
            with lock:
                index = self._indexes.get(name)
                if index is None:
                    index = load_index(self.store, name)  # the binary sidecar, else the JSON one
                    if len(index) != shard["samples"]:
                        raise MsaDistError(
                            f"index of {self.store.url(name)} lists {len(index)} samples, the manifest "
                            f"{shard['samples']}: run `msa-dist shards index {self.location}` again"
                        )
                    self._indexes[name] = index
        finally:
            with self._loading_lock:
                self._loading.pop(name, None)
        return index


class SampleReader:
    """Raw samples of one split by id: {"__key__": key, field: bytes, ...}, as webdataset gives them."""

    def __init__(self, shard_set: ShardSet, split: str):
        self.shard_set, self.split = shard_set, split
        self.shards = shard_set.shards(split)
        self.sizes = shard_column(self.shards, "samples")  # an array: no object per shard
        self._first_id = np.concatenate([[0], np.cumsum(self.sizes)])
        self._samples_read = multiprocessing.Value("q", 0)  # shared with the loader's forked workers

    @property
    def samples_read(self) -> int:
        """Samples cut out of the shard reads so far, in this process and its loader workers."""
        return self._samples_read.value

    def plan(self, ids: np.ndarray) -> list[Run]:
        """The runs holding samples `ids` (slot k of a run's samples: ids[k]), shard by shard."""
        ids = np.asarray(ids, dtype=np.int64)
        shard_of = np.searchsorted(self._first_id, ids, side="right") - 1
        runs: list[Run] = []
        shards = np.unique(shard_of).tolist()
        self.shard_set.preload([self.shards[s] for s in shards])  # the indexes not cached: read side by side
        for s in shards:
            where = np.flatnonzero(shard_of == s)
            local = ids[where] - self._first_id[s]
            index = self.shard_set.index(self.shards[s])
            run: list[tuple[int, int]] = []
            for i, slot in sorted(zip(local.tolist(), where.tolist())):
                if run and not (i == run[-1][0] + 1 and index.starts[i] == index.ends[run[-1][0]]):
                    runs.append(Run(s, run, index.starts[run[0][0]], index.ends[run[-1][0]]))
                    run = []
                run.append((i, slot))
            if run:
                runs.append(Run(s, run, index.starts[run[0][0]], index.ends[run[-1][0]]))
        return runs

    def member_bytes(self, ids: np.ndarray, field: str = "txt") -> np.ndarray:
        """Byte size of member `field` of each sample `ids` (0 where it has none), from the indexes alone."""
        ids = np.asarray(ids, dtype=np.int64)
        shard_of = np.searchsorted(self._first_id, ids, side="right") - 1
        out = np.zeros(len(ids), dtype=np.int64)
        shards = np.unique(shard_of).tolist()
        self.shard_set.preload([self.shards[s] for s in shards])
        for s in shards:
            column = self.shard_set.index(self.shards[s]).fields.get(field)
            if column is None:
                continue
            where = np.flatnonzero(shard_of == s)
            for slot, i in zip(where.tolist(), (ids[where] - self._first_id[s]).tolist()):
                member = column[i]
                out[slot] = 0 if member is None else member[1]
        return out

    def read(self, shard: int, start: int, end: int) -> bytes:
        """Bytes [start, end) of the split's shard number `shard`, in one request."""
        return self.shard_set.store.read_range(self.shards[shard]["name"], start, end)

    def samples(self, run: Run, data: bytes, base: int, out: list, index=None, first: int = 0) -> None:
        """Cut the samples of `run` out of `data` (the shard's bytes from `base` on) into their slots (with
        `index`: the records of samples `first`, ... of the shard, else its whole index)."""
        index = self.shard_set.index(self.shards[run.shard]) if index is None else index
        url = self.shard_set.store.url(self.shards[run.shard]["name"])
        for i, slot in run.samples:
            i -= first
            sample = {"__key__": index.keys[i], "__url__": url}
            for field, offset, size in index.members(i):
                sample[field] = data[offset - base : offset - base + size]
            out[slot] = sample
        with self._samples_read.get_lock():
            self._samples_read.value += len(run.samples)

    def fetch(self, ids: np.ndarray) -> list[dict | Exception]:
        """The samples `ids`, in that order, one request per run, one after another; a sample whose
        run could not be read is the exception."""
        out: list = [None] * len(ids)
        for run in self.plan(ids):
            try:
                data = self.read(run.shard, run.start, run.end)
            except OSError as exc:  # a short read or a failed request: these samples are reported and skipped
                # (an MsaDistError, e.g. a server that ignores Range requests, ends the run in one line)
                for _, slot in run.samples:
                    out[slot] = exc
                continue
            self.samples(run, data, run.start, out)
        return out

    def read_ahead(
        self, items: Iterable[tuple], threads: int, batches_ahead: int, gap_bytes: int
    ) -> Iterator[tuple[tuple, list]]:
        """(item, samples) for each item (..., ids), in order, with the next batches' reads in flight."""
        return ReadAhead(self, threads, batches_ahead, gap_bytes)(items)

    def texts(self, threads: int = 64) -> Iterator[str]:
        """Every `txt` member of the split, in shard order: one small read each (`threads` in flight), nothing else."""
        self.shard_set.preload(self.shards, threads)
        wanted = (
            (s, where)
            for s, shard in enumerate(self.shards)
            for where in self.shard_set.index(shard).fields.get("txt") or []
            if where is not None
        )
        pool = ReadPool(threads, "msa-text")  # daemon threads: an abandoned pass cannot hold the process
        try:
            window = collections.deque(
                pool.submit(self.read, s, w[0], w[0] + w[1]) for s, w in itertools.islice(wanted, 4 * threads)
            )
            while window:
                try:
                    text = window.popleft().result().decode("utf-8", "replace")
                except OSError as exc:  # a read that failed every attempt (stores/http.py)
                    raise MsaDistError(f"reading the texts of split '{self.split}': {exc}") from None
                window.extend(pool.submit(self.read, s, w[0], w[0] + w[1]) for s, w in itertools.islice(wanted, 1))
                yield text
        finally:
            pool.shutdown()
