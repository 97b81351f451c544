"""Where a run's files live: a local run dir, or an object store with local disk as scratch only.

`open_place(run_dir, scratch, cfg, env)` checks the run dir (a URL of a scheme that is no store is
one line) and, for a store, makes this rank's scratch folder afresh (SCRATCH/msa-dist-rank{R}: a
run dir of its own, no folder shared between ranks or nodes) and probes a write, so a bucket that
denies writes fails at start. The trainer then works on `place.local` as on any run dir, and asks
the place to lock it, claim it, fetch what a resume needs, and publish each checkpoint.

With a store: each checkpoint is saved locally (atomically, as files.py does), uploaded per rank
and committed by rank 0 (checkpoint/remote.py); the run's other files (metrics.jsonl, config.yaml,
run_info.json, tokenizer/, ...) go up after each commit and when the run ends. An upload that
fails past `checkpoint.upload_attempts` is one line, "checkpoint at step N was not saved", and the
run goes on or stops as `checkpoint.upload_failure` says.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from msa_dist.common import atomic
from msa_dist.common.display import console
from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import CheckpointConfig
from msa_dist.engine.checkpoint import remote
from msa_dist.engine.run.rundir import RUN_OUTPUTS, RunDirLock, claim_run_dir
from msa_dist.engine.run.store import RunStore, StoreError, check_run_dir, is_remote
from msa_dist.engine.run.store_lock import StoreLock

log = logging.getLogger(__name__)
OUTPUTS = tuple(name for name in RUN_OUTPUTS if name != "checkpoints")  # synced as files, not committed


class RunPlace:
    """A run dir: `local` is where this rank reads and writes; `store` is None for a local run dir."""

    def __init__(self, local: Path, store: RunStore | None, cfg: CheckpointConfig, env):
        self.local, self.store, self.cfg, self.env = local, store, cfg, env

    @property
    def name(self) -> str:
        return self.store.url if self.store else str(self.local)

    def lock(self):
        """One live writer: rank 0 holds the lock file (local) or the lease object (store)."""
        if self.store is None:
            return RunDirLock(self.local, enabled=self.env.is_main)
        return StoreLock(self.store, self.cfg.lock_lease_s, enabled=self.env.is_main)

    def claim(self, overwrite: bool) -> None:
        """A new run: refuse a run dir that holds checkpoints unless `overwrite` (rank 0 deletes its outputs)."""
        if self.store is None:
            return claim_run_dir(self.local, overwrite, self.env.is_main)
        if not remote.committed_steps(self.store) and not self.store.children("checkpoints"):
            return
        if not overwrite:
            raise MsaDistError(
                f"{self.store.url} already holds a run's checkpoints: continue it with --resume auto, "
                "replace it with --overwrite, or train into another --run-dir"
            )
        if self.env.is_main:
            for name in RUN_OUTPUTS:
                self.store.remove(name)
                self.store.delete(name)

    def fetch(self, resume: str | None) -> None:
        """A resume from a store: its run files and newest complete checkpoint into this rank's scratch."""
        if self.store is None or not resume:
            return
        if resume != "auto":
            raise MsaDistError(f"--resume {resume}: with a run dir on a store, resume with --resume auto")
        for name in OUTPUTS:
            remote.download_tree(self.store, name, self.local)
        step = remote.fetch_latest(self.store, self.local / "checkpoints")
        if step is not None and self.env.is_main:
            console.print(f"downloaded {self.store.url}/checkpoints/{step.name} to {step}")

    def share(self, name: str, backend) -> None:
        """Rank 0 wrote `name` (e.g. tokenizer/); with a store, every other rank gets rank 0's copy."""
        if self.store is None:
            return
        if self.env.is_main:
            remote.upload_tree(self.store, self.local, name)
        backend.barrier()
        if not self.env.is_main:
            remote.download_tree(self.store, name, self.local)

    def publish(self, backend, step_dir: Path, step: int, best: bool) -> bool:
        """Upload this rank's part, and commit once all went up (rank 0); False if it was not saved."""
        if self.store is None:
            return True
        reason = self._try(lambda: remote.upload_part(self.store, step_dir, self.env.rank))
        if not self._all_ok(backend, reason):
            return self._not_saved(step, reason)
        reason = self._commit(step_dir, best)  # rank 0 only; the others learn its answer below
        return self._all_ok(backend, reason) or self._not_saved(step, reason)

    def _commit(self, step_dir: Path, best: bool) -> str | None:
        if not self.env.is_main:
            return None

        def work():
            remote.commit(self.store, step_dir.name, self.env.world_size, self.cfg.keep_last)
            if best:
                remote.upload_best(self.store, step_dir.parent / "best")
            self.upload_outputs()

        return self._try(work)

    def _try(self, work) -> str | None:
        try:
            work()
        except (StoreError, OSError) as exc:
            log.warning("rank %d: %s", self.env.rank, exc)
            return str(exc)
        return None

    def _all_ok(self, backend, reason: str | None) -> bool:
        """Every rank's answer: the ranks agree whether the step is saved (a collective: all call it)."""
        failed = torch.tensor([0.0 if reason is None else 1.0], device=self.env.device)
        return float(backend.all_reduce_sum(failed)[0]) == 0

    def _not_saved(self, step: int, reason: str | None) -> bool:
        line = f"checkpoint at step {step} was not saved to {self.store.url}" + (f": {reason}" if reason else "")
        if self.cfg.upload_failure == "stop":
            raise MsaDistError(f"{line}; stopping (checkpoint.upload_failure=stop)")
        if self.env.is_main or reason:
            console.print(f"[yellow]{line}[/]; training goes on (checkpoint.upload_failure=continue)")
        return False

    def upload_outputs(self) -> None:
        """Rank 0: the run's files besides checkpoints (metrics, config, provenance, tokenizer, report)."""
        if self.store is not None and self.env.is_main:
            for name in OUTPUTS:
                remote.upload_tree(self.store, self.local, name)


def open_place(run_dir: str | Path, scratch: str | None, cfg: CheckpointConfig, env) -> RunPlace:
    """The run dir `--run-dir` names; for a store, this rank's fresh scratch and a write probe."""
    check_run_dir(str(run_dir))
    if not is_remote(str(run_dir)):
        if scratch and env.is_main:
            console.print("[yellow]--scratch has no effect with a local --run-dir[/] (it is for a run dir on a store)")
        return RunPlace(Path(run_dir), None, cfg, env)
    store = RunStore(str(run_dir), attempts=cfg.upload_attempts)
    store.probe(env.rank)
    root = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix="msa-dist-scratch-"))
    local = atomic.fresh_dir(root / f"msa-dist-rank{env.rank}")  # nothing of an earlier run mixes in
    return RunPlace(local, store, cfg, env)


REPORT = ("report.md", "curves.png", "confusion_matrix.png")


def upload_report(run_dir: str | Path, local: str | Path, cfg: CheckpointConfig) -> None:
    """The report written into `local` after the run, up to a run dir on a store (nothing for a local one)."""
    if is_remote(str(run_dir)):
        store = RunStore(str(run_dir), attempts=cfg.upload_attempts)
        for name in REPORT:
            remote.upload_tree(store, Path(local), name)
