"""A run dir on an object store (`--run-dir s3://BUCKET/PREFIX`, `gs://...`): the files under it, through fsspec.

Only object stores are run dirs: a URL of another scheme (http://, a typo) is one line, never a
local folder named after the scheme. s3:// needs `pip install 'msa-dist[s3]'` (s3fs); others their
fsspec filesystem (gcsfs, adlfs). Credentials, region and endpoint come from where the filesystem
reads them itself: for s3://, boto3's chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE,
instance roles, AWS_ENDPOINT_URL_S3) and fsspec's own variables (FSSPEC_S3_ENDPOINT_URL,
FSSPEC_S3='{"key": ...}'). None of it is ever written into a file of the run; a URL with a
password in it is refused (it would be printed and logged).

Writes are retried `attempts` times with a doubling pause: a store that keeps failing ends in one
line (`StoreError`), which the caller turns into "checkpoint at step N was not saved".
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from msa_dist.common.errors import MsaDistError
from msa_dist.common.urls import redact_url

log = logging.getLogger(__name__)
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_LOOKS_LIKE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")  # `s3:/x`: a URL with a slash lost (Path('s3://x'))
# Object stores fsspec reaches (the filesystem installed separately); memory:// serves tests.
STORE_SCHEMES = {
    "s3": "s3fs (pip install 'msa-dist[s3]')",
    "s3a": "s3fs (pip install 'msa-dist[s3]')",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
    "oci": "ocifs",
    "memory": "fsspec",
}


class StoreError(MsaDistError):
    """The store failed past the retries (or refused): one line."""


def is_remote(run_dir: str | Path) -> bool:
    """True for `SCHEME://...` (any scheme; `check_run_dir` refuses those that are no run dir)."""
    return isinstance(run_dir, str) and bool(_URL.match(run_dir))


def check_run_dir(run_dir: str) -> None:
    """One line for a run dir that is a URL of a scheme that cannot hold a run, or looks like a mangled one."""
    match = _URL.match(run_dir)
    if match is None:
        if _LOOKS_LIKE_URL.match(run_dir) and run_dir.split(":", 1)[0].lower() in STORE_SCHEMES:
            raise MsaDistError(
                f"--run-dir {run_dir}: a store URL needs two slashes ({run_dir.replace(':/', '://', 1)})"
            )
        return
    scheme = match.group(1).lower()
    if scheme not in STORE_SCHEMES:
        raise MsaDistError(
            f"--run-dir {redact_url(run_dir)}: {scheme}:// cannot hold a run dir; use a local folder or an "
            f"object store ({', '.join(s + '://' for s in sorted(STORE_SCHEMES) if s != 'memory')})"
        )
    if "@" in run_dir.split("://", 1)[1].split("/", 1)[0]:
        raise MsaDistError(
            f"--run-dir {redact_url(run_dir)}: no credentials in the URL (they would be logged); "
            "give them in the environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)"
        )


def _precondition(exc: Exception) -> bool:
    """S3's 412 PreconditionFailed (a conditional write lost), however the filesystem words it."""
    return "pre-condition" in str(exc) or "PreconditionFailed" in str(exc)


class RunStore:
    """The objects under one run dir URL; names are '/'-separated, relative to it."""

    def __init__(self, url: str, attempts: int = 3, pause_s: float = 1.0):
        check_run_dir(url)
        self.url, self.attempts, self.pause_s = url.rstrip("/"), max(attempts, 1), pause_s
        self.protocol = url.split("://", 1)[0].lower()
        try:
            import fsspec

            self.fs = fsspec.filesystem(self.protocol)  # options from fsspec's config and the environment
        except ImportError:
            raise MsaDistError(
                f"--run-dir {self.url}: {self.protocol}:// needs {STORE_SCHEMES[self.protocol]}"
            ) from None
        self.root = self.url.split("://", 1)[1] if self.protocol != "memory" else "/" + self.url.split("://", 1)[1]

    def path(self, name: str = "") -> str:
        return f"{self.root}/{name}".rstrip("/")

    def where(self, name: str = "") -> str:
        return f"{self.url}/{name}".rstrip("/")

    def _retry(self, what: str, call):
        """`call()` retried with a doubling pause; StoreError after the last attempt."""
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except (FileNotFoundError, FileExistsError):  # answers, not failures
                raise
            except Exception as exc:  # the filesystems raise many kinds (OSError, botocore's, aiohttp's)
                if isinstance(exc, PermissionError) or attempt == self.attempts or _precondition(exc):
                    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                    raise StoreError(f"{what}: {reason} ({attempt} attempt(s))") from None
                log.warning("%s failed (%s); retrying", what, type(exc).__name__)
                time.sleep(self.pause_s * 2 ** (attempt - 1))

    def _write(self, what: str, call) -> None:
        """A write; a missing bucket (FileNotFoundError) is one line too."""
        try:
            self._retry(what, call)
        except FileNotFoundError as exc:
            raise StoreError(f"{what}: {str(exc).splitlines()[0] if str(exc) else 'no such bucket'}") from None

    def put_file(self, local: Path, name: str) -> None:
        self._write(f"cannot upload {self.where(name)}", lambda: self.fs.put_file(str(local), self.path(name)))

    def get_file(self, name: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self._retry(f"cannot download {self.where(name)}", lambda: self.fs.get_file(self.path(name), str(local)))

    def write(self, name: str, data: bytes) -> None:
        self._write(f"cannot write {self.where(name)}", lambda: self.fs.pipe_file(self.path(name), data))

    def read(self, name: str) -> bytes | None:
        """The object's bytes, None if there is none."""
        try:
            return self._retry(f"cannot read {self.where(name)}", lambda: self.fs.cat_file(self.path(name)))
        except FileNotFoundError:
            return None

    def create(self, name: str, data: bytes) -> bool:
        """Write `name` only if no object is there (S3's If-None-Match: *); False if one is."""
        try:
            self._retry(
                f"cannot write {self.where(name)}", lambda: self.fs.pipe_file(self.path(name), data, mode="create")
            )
        except FileExistsError:  # s3fs maps S3's 412 PreconditionFailed to it
            return False
        return True

    def etag(self, name: str) -> str | None:
        """The object's ETag (S3), or its creation time elsewhere; None if there is none."""
        try:
            info = self._retry(f"cannot read {self.where(name)}", lambda: self.fs.info(self.path(name)))
        except FileNotFoundError:
            return None
        finally:
            self.fs.invalidate_cache()
        return str(info.get("ETag") or info.get("created") or info.get("mtime") or "")

    def replace_if(self, name: str, data: bytes, etag: str | None) -> bool:
        """Replace `name` only if it is still the object of `etag` (S3's If-Match); False if it is not.
        Elsewhere: compare, then delete and create (a race with another writer is possible)."""
        if self.protocol in ("s3", "s3a") and etag:
            try:
                self._retry(
                    f"cannot write {self.where(name)}", lambda: self.fs.pipe_file(self.path(name), data, IfMatch=etag)
                )
            except (FileExistsError, FileNotFoundError):
                return False
            except StoreError as exc:
                if _precondition(exc):
                    return False
                raise
            return True
        if self.etag(name) != etag:
            return False
        self.delete(name)
        return self.create(name, data)

    def sizes(self, prefix: str) -> dict[str, int]:
        """{name relative to `prefix`: size} of every object under it (all depths)."""
        base = self.path(prefix)
        try:
            found = self._retry(
                f"cannot list {self.where(prefix)}", lambda: self.fs.find(base, detail=True, withdirs=False)
            )
        except FileNotFoundError:
            return {}
        self.fs.invalidate_cache()
        return {p[len(base) :].lstrip("/"): int(info.get("size") or 0) for p, info in found.items()}

    def children(self, prefix: str) -> list[str]:
        """The names directly under `prefix` (objects and 'folders')."""
        try:
            entries = self._retry(
                f"cannot list {self.where(prefix)}", lambda: self.fs.ls(self.path(prefix), detail=False)
            )
        except FileNotFoundError:
            return []
        finally:
            self.fs.invalidate_cache()
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def remove(self, prefix: str) -> None:
        """Delete everything under `prefix` (nothing if there is none)."""
        for name in self.sizes(prefix):
            try:
                self._retry(
                    f"cannot delete {self.where(prefix)}", lambda n=name: self.fs.rm_file(self.path(f"{prefix}/{n}"))
                )
            except FileNotFoundError:
                pass

    def delete(self, name: str) -> None:
        try:
            self._retry(f"cannot delete {self.where(name)}", lambda: self.fs.rm_file(self.path(name)))
        except FileNotFoundError:
            pass

    def probe(self, rank: int) -> None:
        """Write and delete a small object: a store that denies writes is one line at start, not after an epoch."""
        name = f".probe/rank-{rank}"
        try:
            self.write(name, b"msa-dist write probe\n")
            self.delete(name)
        except StoreError as exc:
            raise StoreError(f"cannot write to the run dir {self.url}: {exc}") from None
