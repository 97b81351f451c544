"""`TrainStream`: one rank's training batches, epoch after epoch, and its position in them.

One DataLoader serves the whole run: its workers make their share of every epoch's batches
(order.py's rule) and go straight on to the next epoch, so an epoch boundary costs neither worker
start-up nor a cold pipeline. Unless batches are pinned, workers reuse a batch's shared memory once
no tensor of it is left in this process.

The stream owns its position: `state_dict()` is (epoch, samples of it trained on) plus what the
order depends on; `load_state_dict()` decides whether that position carries over to this run's
layout. It does whenever the split, seed and chunking are the same and this run's global batch
divides the position: a run saved on 2 ranks x batch 4 resumes mid-epoch on 1 rank x batch 8 (or
4 ranks x batch 2, or batch 4 x 2 accumulation steps) with no sample repeated or skipped.
Otherwise the epoch restarts from its first batch, with a warning. With length buckets
(`data.length_bucket_batches`, data/loading/buckets.py) a rank's batches are regrouped among themselves,
so a position carries over only to the same batch size and world size.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from msa_dist.common.errors import MsaDistError
from msa_dist.config.data_section import DataConfig
from msa_dist.data.format.index_bin import shards_to_preload
from msa_dist.data.loading.blocks import BlockTrainPlan, block_key
from msa_dist.data.loading.loader import StreamSpec, _Batches, _data_loader, _train_plan, as_shard_set
from msa_dist.data.loading.order import ORDER_VERSION
from msa_dist.data.loading.reader import SampleReader, ShardSet

# keys of the order a position saved by an earlier version lacks, with the value they had then
SAVED_BEFORE = {"length_bucket_batches": 0, "read_mode": "chunks"}


class TrainStream:
    """One rank's training batches from `spec.epoch` to `epochs` (None: endless); an epoch has
    `batches_per_epoch` micro batches on every rank (at most `batches_per_epoch` if given). Close it
    to stop the workers."""

    BLOCKS_PER_WORKER = 8  # > the DataLoader's prefetch (4) + the batch in use + the one being made

    def __init__(
        self,
        cfg: DataConfig,
        shards: str | ShardSet,
        spec: StreamSpec,
        tokenizer,
        pin_memory: bool = False,
        epochs: int | None = None,
        batches_per_epoch: int | None = None,
    ):
        self.cfg, self.spec, self.tokenizer = cfg, spec, tokenizer
        self.shard_set = as_shard_set(shards)
        self.reader = SampleReader(self.shard_set, spec.split)
        # read once here (all, if they fit the index cache): forked workers inherit the indexes
        self.shard_set.preload(shards_to_preload(self.shard_set, self.reader.shards))
        self.end = epochs
        self.plan = _train_plan(cfg, self.reader, spec, end_epoch=epochs, max_batches_per_epoch=batches_per_epoch)
        if self.plan.batches_per_epoch == 0:
            raise MsaDistError(
                f"split '{spec.split}' ({int(self.reader.sizes.sum())} samples) has no whole global batch of "
                f"{spec.batch_size} x {spec.grad_accum_steps} accumulation x {spec.world_size} ranks: "
                "lower train.batch_size"
            )
        self.pinned = pin_memory and cfg.pin_memory
        # Pinned batches are copies made by the DataLoader's pin thread, which drops the shared
        # memory unseen here; device-decoded batches have no image block: no pool for those.
        pooled = cfg.workers > 0 and not self.pinned and not cfg.decode_on_device
        self._released = (
            torch.zeros(cfg.workers, self.BLOCKS_PER_WORKER, dtype=torch.uint8).share_memory_() if pooled else None
        )
        self._epoch, self._done = spec.epoch, 0  # position: the epoch, and its micro batches trained on
        self._out: list[tuple[StorageWeakRef, int, int]] = []  # pooled blocks handed out: (storage, worker, index)
        self._batches: Iterator[dict] | None = None
        self.corrupt = None  # the workers' CorruptCounter, once started

    @property
    def batches_per_epoch(self) -> int:
        return self.plan.batches_per_epoch

    @property
    def batches_done(self) -> int:
        """Micro batches of the current epoch this rank has handed out."""
        return self._done

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, micro batches of it this rank has handed out)."""
        return self._epoch, self._done

    @property
    def corrupt_samples(self) -> int:
        """Samples this rank's workers skipped as unreadable so far."""
        return 0 if self.corrupt is None else self.corrupt.count

    def _order_key(self) -> dict:
        buckets = self.cfg.length_bucket_batches if self.cfg.length_bucket_batches > 1 else 0
        key = {
            "order": ORDER_VERSION,
            "split": self.spec.split,
            "samples": int(self.reader.sizes.sum()),
            "seed": self.spec.seed,
            "chunk_samples": self.cfg.chunk_samples,
            "resampled": self.cfg.resampled,
            "length_bucket_batches": buckets,
            "read_mode": "blocks" if isinstance(self.plan, BlockTrainPlan) else "chunks",
        }
        if isinstance(self.plan, BlockTrainPlan):  # the order then depends on the micro batch, not the world
            key.update(block_key(self.plan))
        if buckets:  # a rank's batches are then regrouped among themselves: its layout is part of the order
            key.update(batch_size=self.spec.batch_size, world_size=self.spec.world_size)
        return key

    def state_dict(self) -> dict:
        """Where the stream is: every batch handed out counts as trained on."""
        return {**self._order_key(), "epoch": self._epoch, "samples_done": self._done * self.plan.round_samples}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position (before the first batch is drawn)."""
        if self._batches is not None:
            raise RuntimeError("load_state_dict after the stream started")
        epoch, done = int(state["epoch"]), int(state["samples_done"])
        global_batch = self.plan.round_samples * self.spec.grad_accum_steps
        saved = {k: state.get(k, SAVED_BEFORE.get(k)) for k in self._order_key()}
        if done and saved != self._order_key():
            changed = ", ".join(f"{k} {saved[k]!r} -> {v!r}" for k, v in self._order_key().items() if saved[k] != v)
            warnings.warn(
                f"the data order changed ({changed}): epoch {epoch + 1} restarts from its first batch", stacklevel=2
            )
            done = 0
        elif done % global_batch:
            warnings.warn(
                f"the saved position ({done} samples into epoch {epoch + 1}) is not a whole number of this "
                f"run's global batches of {global_batch}: the epoch restarts from its first batch",
                stacklevel=2,
            )
            done = 0
        self._epoch, self._done = epoch, min(done // self.plan.round_samples, self.batches_per_epoch)

    def _start(self) -> None:
        plan = dataclasses.replace(self.plan, first_epoch=self._epoch, first_batch=self._done)
        dataset = _Batches(self.cfg, self.reader, plan, self.tokenizer, self.spec, self._released)
        self.corrupt = dataset.corrupt
        # Starting a DataLoader draws a seed from the global RNG; fork it so that a resumed
        # run draws the same dropout masks as an uninterrupted one.
        with torch.random.fork_rng(devices=[]):
            self._batches = iter(_data_loader(dataset, self.cfg, self.pinned))

    def epoch(self, epoch: int) -> Iterator[dict]:
        """The batches of `epoch` still to train on. A batch's tensors stay valid while referenced."""
        if epoch != self._epoch:
            raise MsaDistError(f"the stream is at epoch {self._epoch + 1}, not {epoch + 1}")
        if self._batches is None:
            self._start()
        while self._done < self.batches_per_epoch:
            self._release_blocks()
            batch = next(self._batches, None)
            if batch is None or tuple(batch.pop("position")) != (epoch, self._done):
                got = self._done
                self.close()
                raise MsaDistError(
                    f"rank {self.spec.rank} ran out of training data after {got} of "
                    f"{self.batches_per_epoch} batches in epoch {epoch + 1}: the shards no longer "
                    f"match the manifest; run `msa-dist shards verify {self.shard_set.location}`"
                )
            block = batch.pop("block", None)
            if block is not None:
                self._out.append((StorageWeakRef(batch["images"].untyped_storage()), *block))
            self._done += 1
            yield batch
            del batch  # the consumer's reference alone decides when the block is free again
        self._epoch, self._done = epoch + 1, 0

    def _release_blocks(self) -> None:
        """Tell the workers which of their blocks no tensor here uses any more."""
        still_out = []
        for storage, worker, index in self._out:
            if storage.expired():
                self._released[worker, index] = 1
            else:
                still_out.append((storage, worker, index))
        self._out = still_out

    def batches(self) -> Iterator[dict]:
        """All batches from the current position on, across epoch boundaries (until `epochs`)."""
        while self.end is None or self._epoch < self.end:
            yield from self.epoch(self._epoch)

    def close(self) -> None:
        """Stop the workers now: left to interpreter exit, they would be joined after a SIGTERM,
        which they defer (see loader._worker_init)."""
        self._batches = None
