"""One live writer per run dir on an object store: a lease object, RUN_URL/.lock.

Rank 0 creates `.lock` with a conditional write (S3's `If-None-Match: *`: it fails when the object
exists), holding {host, pid, job, restart, expires_at}, and renews it every third of
`checkpoint.lock_lease_s` from a thread; it deletes it when the run ends. A second job on the same
prefix finds a live lease and is refused in one line. A lease that was not renewed in time (its
holder was killed, or lost its nodes) may be taken over, as may one held by an earlier attempt of
the same torchrun job (same --rdzv-id, lower restart count: the survivors of a lost node).

Limits (docs/clusters.md): a takeover replaces the stale object conditionally on its ETag
(`If-Match`) on S3; on other stores it deletes and re-creates it, so two jobs taking over the same
expired lease at the same instant could both win. Expiry compares the holder's clock (expires_at)
with the taker's: clocks skewed by more than the lease break it. A holder stalled longer than the
lease (a stopped process) loses the lock without knowing until its next renewal, which logs it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from msa_dist.common.errors import MsaDistError
from msa_dist.engine.run.store import RunStore

log = logging.getLogger(__name__)
LOCK = ".lock"


def _job() -> tuple[str | None, int]:
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    return (None if job in (None, "", "none") else job), int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


class StoreLock:
    """Hold RUN_URL/.lock while training (rank 0); a second live writer gets a one-line MsaDistError."""

    def __init__(self, store: RunStore, lease_s: float, enabled: bool = True):
        self.store, self.lease_s, self.enabled = store, float(lease_s), enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._etag: str | None = None

    def __enter__(self) -> StoreLock:
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _record(self) -> bytes:
        job, restart = _job()
        record = {"host": socket.gethostname(), "pid": os.getpid(), "job": job, "restart": restart}
        return json.dumps({**record, "expires_at": time.time() + self.lease_s}).encode()

    def acquire(self) -> None:
        if not self.store.create(LOCK, self._record()):
            held, etag = self._held()
            if held is not None and not self._may_take(held):
                left = held.get("expires_at", 0) - time.time()
                raise MsaDistError(
                    f"{self.store.url} is in use by a live run (host={held.get('host')} pid={held.get('pid')}, "
                    f"lease renewed until {left:.0f} s from now): wait for it to end or its lease to expire, "
                    "or train into another --run-dir"
                )
            if not self.store.replace_if(LOCK, self._record(), etag):
                raise MsaDistError(f"{self.store.url}: another job took the run dir's lock at the same time")
        self._etag = self.store.etag(LOCK)
        self._thread = threading.Thread(target=self._renew, name="store-lock", daemon=True)
        self._thread.start()

    def _held(self) -> tuple[dict | None, str | None]:
        etag = self.store.etag(LOCK)
        raw = self.store.read(LOCK)
        try:
            held = json.loads(raw) if raw else None
        except ValueError:
            held = {}  # not ours to read: treated as expired
        return (held if isinstance(held, dict) or held is None else {}), etag

    def _may_take(self, held: dict) -> bool:
        """An expired lease, or one of an earlier attempt of this same torchrun job."""
        expires = held.get("expires_at")
        if not isinstance(expires, (int, float)) or expires < time.time():
            return True
        job, restart = _job()
        return job is not None and held.get("job") == job and int(held.get("restart") or 0) < restart

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.store.replace_if(LOCK, self._record(), self._etag):
                    log.error(
                        "%s: the run dir's lock was taken by another job: this run is no longer its only writer",
                        self.store.url,
                    )
                    return
                self._etag = self.store.etag(LOCK)
            except MsaDistError as exc:  # the store is unreachable for a while: try again next time
                log.warning("could not renew the run dir's lock: %s", exc)

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        try:
            if self.store.etag(LOCK) == self._etag:
                self.store.delete(LOCK)
        except MsaDistError as exc:
            log.warning("could not delete the run dir's lock (it expires in %.0f s): %s", self.lease_s, exc)
