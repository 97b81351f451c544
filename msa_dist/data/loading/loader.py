"""The streaming loader: a rank's batches, read with ranged reads and made in DataLoader workers.

How the data is divided is order.py's rule (with `data.length_bucket_batches`, each rank's
training batches regrouped by text length: buckets.py); reading a sample is reader.py's; making a
batch is batching.py's. This module runs them: `EvalLoader` (a split's evaluation batches, pass
after pass, from workers forked once), `build_loader` (one pass), `iter_texts` (the tokenizer's
pass over the texts alone). The training batches of one rank, epoch after epoch, with their
position, are stream.py's `TrainStream`.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from msa_dist.common.errors import MsaDistError
from msa_dist.config.data_section import DataConfig
from msa_dist.data.format.index_bin import shards_to_preload
from msa_dist.data.loading.batching import BatchMaker, BlockPool
from msa_dist.data.loading.block_reads import BlockReads
from msa_dist.data.loading.blocks import BlockTrainPlan, block_train_plan, train_read_mode
from msa_dist.data.loading.buckets import WindowBuckets
from msa_dist.data.loading.order import EvalPlan, TrainPlan
from msa_dist.data.loading.reader import SampleReader, ShardSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSpec:
    """Which part of which epoch one rank reads."""

    split: str
    train: bool
    batch_size: int  # micro batch per rank
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    epoch: int = 0  # the first epoch
    grad_accum_steps: int = 1  # micro batches per optimizer step: a global batch is batch x accum x world


class CorruptCounter:
    """An error handler that logs and counts bad samples instead of dying; the count lives in shared
    memory so that worker processes add to the parent's total."""

    def __init__(self):
        self._value = multiprocessing.Value("i", 0)

    def __call__(self, exc: Exception) -> bool:
        with self._value.get_lock():
            self._value.value += 1
        log.warning("skipping a sample that could not be read or decoded: %s", repr(exc)[:200])
        return True  # continue with the next sample

    @property
    def count(self) -> int:
        return self._value.value


def as_shard_set(shards: str | ShardSet) -> ShardSet:
    return shards if isinstance(shards, ShardSet) else ShardSet(str(shards))


def _worker_info() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _Batches(torch.utils.data.IterableDataset):
    """The batches of a plan: worker w of W makes the t-th batch for t = w, w + W, ... (the order in
    which the DataLoader hands them out), each tagged with its (epoch, batch)."""

    def __init__(
        self,
        cfg: DataConfig,
        reader: SampleReader,
        plan: TrainPlan | EvalPlan,
        tokenizer,
        spec: StreamSpec,
        released: torch.Tensor | None = None,
    ):
        self.cfg, self.reader, self.plan, self.tokenizer, self.spec = cfg, reader, plan, tokenizer, spec
        self.released = released  # [workers, blocks] flags in shared memory, or None: no BlockPool
        self.corrupt = CorruptCounter()
        self.buckets = (
            WindowBuckets(plan, reader.member_bytes, cfg.length_bucket_batches)
            if isinstance(plan, TrainPlan) and cfg.length_bucket_batches > 1
            else None
        )

    def _ids(self, t: int, orders: dict):
        if isinstance(self.plan, EvalPlan):
            ids = self.plan.ids(t)
            return None if ids is None else (0, t, ids)
        where = self.plan.locate(t)
        if where is None:
            return None
        epoch, batch = where
        if epoch not in orders:
            orders.clear()
            orders[epoch] = self.plan.order(epoch)
        if self.buckets is not None:
            return epoch, batch, self.buckets.ids(orders[epoch], epoch, batch)
        return epoch, batch, self.plan.ids(orders[epoch], batch)

    def __iter__(self) -> Iterator[dict]:
        worker, workers = _worker_info()
        pool = BlockPool(self.released[worker], worker) if self.released is not None else None
        maker = BatchMaker(
            self.cfg, self.tokenizer, self.spec.batch_size, self.spec.train, self.spec.seed, self.corrupt, pool
        )
        orders: dict = {}
        items = itertools.takewhile(
            lambda item: item is not None, (self._ids(t, orders) for t in itertools.count(worker, workers))
        )
        # the next batches' reads stay in flight while this one is made (readahead.py; blocks mode: block_reads.py)
        if isinstance(self.plan, BlockTrainPlan):
            reads = BlockReads(self.reader, self.plan, self.cfg.read_threads)(worker, workers)
        else:
            reads = self.reader.read_ahead(
                items, self.cfg.read_threads, self.cfg.read_ahead_batches, self.cfg.read_gap_bytes
            )
        for (epoch, index, _), samples in reads:
            batch = maker.make(samples, epoch)
            if batch is None:
                if not self.spec.train:
                    continue
                raise MsaDistError(
                    f"no sample of training batch {index} of epoch {epoch + 1} could be read "
                    f"({self.corrupt.count} bad samples so far): see the warnings above"
                )
            batch["position"] = (epoch, index)
            yield batch


SIGTERM_GRACE_S = 30  # SLURM's default KillWait: it sends SIGKILL this long after SIGTERM


def _defer_sigterm(signum, frame) -> None:
    if not signal.getitimer(signal.ITIMER_REAL)[0]:
        signal.alarm(SIGTERM_GRACE_S)  # SIGALRM ends the worker, should its parent never stop it


def _worker_init(worker_id: int) -> None:
    # SLURM and torchrun send SIGTERM to the whole process group: a worker keeps serving batches
    # while the training process reaches its next step boundary and saves a checkpoint.
    signal.signal(signal.SIGTERM, _defer_sigterm)


def _data_loader(
    dataset: _Batches, cfg: DataConfig, pinned: bool, persistent: bool = False
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=cfg.workers,
        pin_memory=pinned,
        prefetch_factor=4 if cfg.workers > 0 else None,
        worker_init_fn=_worker_init,
        persistent_workers=persistent and cfg.workers > 0,
    )


def build_loader(
    cfg: DataConfig, shards: str | ShardSet, spec: StreamSpec, tokenizer, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """One pass: for evaluation (train=False) this rank's batches of the split in stored order
    (`loader.plan.batches`; `loader.plan.most_batches` on the busiest rank); for training, epoch
    `spec.epoch` of the training order. `loader.corrupt` counts skipped samples; `loader.listed` is the
    split's sample count as the manifest states it (`plan.num_samples` is its shards' sum)."""
    reader = SampleReader(as_shard_set(shards), spec.split)
    if spec.train:
        plan = _train_plan(cfg, reader, spec, end_epoch=spec.epoch + 1)
    else:
        plan = EvalPlan(int(reader.sizes.sum()), spec.batch_size, spec.rank, spec.world_size)
    dataset = _Batches(cfg, reader, plan, tokenizer, spec)
    loader = _data_loader(dataset, cfg, pin_memory and cfg.pin_memory)
    loader.plan, loader.corrupt, loader.listed = plan, dataset.corrupt, reader.shard_set.samples(spec.split)
    return loader


class EvalLoader:
    """One rank's evaluation batches of a split (as `build_loader` gives them), pass after pass, from
    DataLoader workers forked once, here, and reused by every pass. Close it to stop the workers.

    Why: a process forked while another of its threads holds a lock inherits that lock held, with
    no thread left to release it. Once a training stream runs, this process has the stream's
    queue-feeder threads (a pin-memory thread on GPUs), intra-op threads and the tokenizer's thread
    pool; a val loader built at each epoch end forked its workers among them, and one was seen to
    deadlock at start (README, Clusters). Built before the training stream starts, these workers
    are forked while those threads are idle or not there yet, and nothing forks while training runs.
    """

    def __init__(self, cfg: DataConfig, shards: str | ShardSet, spec: StreamSpec, tokenizer):
        assert not spec.train, "EvalLoader is for evaluation; training batches come from TrainStream"
        self.spec = spec
        reader = SampleReader(as_shard_set(shards), spec.split)
        # read here (all, if they fit the index cache): the forked workers inherit them
        reader.shard_set.preload(shards_to_preload(reader.shard_set, reader.shards))
        self.plan = EvalPlan(int(reader.sizes.sum()), spec.batch_size, spec.rank, spec.world_size)
        dataset = _Batches(cfg, reader, self.plan, tokenizer, spec)
        self.corrupt, self.listed = dataset.corrupt, reader.shard_set.samples(spec.split)
        self._loader = _data_loader(dataset, cfg, pinned=False, persistent=True)
        # Starting the iterator forks the workers now (they read the first pass's first batches
        # meanwhile); later passes resume the same workers.
        self._first: Iterator[dict] | None = iter(self._loader) if cfg.workers > 0 else None

    def __iter__(self) -> Iterator[dict]:
        """One pass over this rank's batches (a pass left unfinished is dropped by the next)."""
        if self._loader is None:
            raise RuntimeError("EvalLoader used after close()")
        first, self._first = self._first, None
        return first if first is not None else iter(self._loader)

    def close(self) -> None:
        """Stop the workers now: dropping the DataLoader (and its iterator) shuts them down; left to
        interpreter exit, they would be joined after a SIGTERM, which they defer (_worker_init)."""
        self._first = self._loader = None


def _train_plan(cfg: DataConfig, reader: SampleReader, spec: StreamSpec, **kw) -> TrainPlan:
    if train_read_mode(cfg, reader.shards) == "blocks":
        return block_train_plan(cfg, reader.shards, spec, **kw)
    return TrainPlan(
        int(reader.sizes.sum()),
        cfg.chunk_samples,
        cfg.resampled,
        spec.seed,
        spec.batch_size,
        spec.grad_accum_steps,
        spec.rank,
        spec.world_size,
        first_epoch=spec.epoch,
        **kw,
    )


def iter_texts(shards: str | ShardSet, split: str = "train", max_chars: int | None = None) -> Iterator[str]:
    """Texts of a split, reading nothing but the `txt` members (e.g. to train a tokenizer); each cut
    to `max_chars` characters when given (common/limits.py's text_char_limit, as the loader cuts them)."""
    texts = SampleReader(as_shard_set(shards), split).texts()
    return texts if max_chars is None else (text[:max_chars] for text in texts)
