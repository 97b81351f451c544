"""`s3://BUCKET/PREFIX` shard sets through boto3 (`pip install 'msa-dist[s3]'`): ranged GETs.

Credentials, region and endpoint come from the usual AWS sources, which boto3 reads itself:
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN), AWS_PROFILE, AWS_DEFAULT_REGION,
and AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for an S3-compatible server (MinIO, Ceph, moto).
Throttling (503 SlowDown) and other transient answers are retried by botocore's standard retry
mode with backoff, AWS_MAX_ATTEMPTS attempts in all (default 8); what is left after that, a
missing bucket or key, a denied request or missing credentials, ends in one line.
"""

from __future__ import annotations

import os
import threading
import urllib.parse

from msa_dist.common.errors import MsaDistError
from msa_dist.common.limits import MAX_MANIFEST_BYTES
from msa_dist.data.stores.base import MissingFile, ShardStore

_CLIENT_LOCK = threading.Lock()  # boto3's session set-up is not thread-safe; the client is
DEFAULT_ATTEMPTS = 8


class S3Store(ShardStore):
    """An S3 bucket and prefix; one boto3 client per process (its connection pool serves the reader threads)."""

    def __init__(self, url: str):
        super().__init__()
        parts = urllib.parse.urlsplit(url)
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        if not self.bucket:
            raise MsaDistError(f"{url}: an S3 location is s3://BUCKET[/PREFIX]")
        self.location = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise MsaDistError(
                f"cannot open {self.location}: boto3 is not installed (pip install 'msa-dist[s3]')"
            ) from None

    def _client(self):
        cached = self.__dict__.get("_fs")  # `_fs`: dropped when the store is pickled (ShardStore.__getstate__)
        if cached is not None and cached[0] == os.getpid():  # a forked loader worker makes its own
            return cached[1]
        import boto3
        from botocore.config import Config

        attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", DEFAULT_ATTEMPTS))
        config = Config(
            retries={"total_max_attempts": attempts, "mode": os.environ.get("AWS_RETRY_MODE", "standard")},
            max_pool_connections=64,
            connect_timeout=10,
            read_timeout=60,
        )
        with _CLIENT_LOCK:
            cached = self.__dict__.get("_fs")
            if cached is None or cached[0] != os.getpid():
                cached = self._fs = (os.getpid(), boto3.session.Session().client("s3", config=config))
        return cached[1]

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    def _call(self, name: str, method: str, **kwargs):
        """One S3 call; its errors as one line (MsaDistError), FileNotFoundError for a missing key."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return getattr(self._client(), method)(Bucket=self.bucket, **kwargs)
        except NoCredentialsError:
            raise MsaDistError(
                f"{self.url(name)}: no AWS credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            ) from None
        except ClientError as exc:
            raise _client_error(exc, self.url(name), self.bucket) from None
        except BotoCoreError as exc:  # cannot connect, read timeout: after botocore's retries
            raise MsaDistError(f"{self.url(name)}: {exc}") from None

    def read(self, name: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        try:
            answer = self._call(name, "get_object", Key=self._key(name))
        except FileNotFoundError:
            raise MissingFile(f"{self.url(name)} does not exist") from None
        try:
            data = _read(answer["Body"], limit + 1) if int(answer.get("ContentLength") or 0) <= limit else None
        except OSError as exc:
            raise MsaDistError(f"{self.url(name)}: {exc}") from None
        if data is None or len(data) > limit:  # no more than `limit` (and one byte to tell) is read
            answer["Body"].close()
            raise MsaDistError(f"{self.url(name)}: more than the {limit} bytes allowed")
        return self._count(data)

    def read_range(self, name: str, start: int, end: int) -> bytes:
        try:
            body = self._call(name, "get_object", Key=self._key(name), Range=f"bytes={start}-{end - 1}")["Body"]
        except FileNotFoundError:
            raise MsaDistError(f"shard {self.url(name)} does not exist") from None
        data = _read(body, end - start + 1)  # no more than asked for (and one byte to tell)
        if len(data) != end - start:
            body.close()
            raise OSError(f"{self.url(name)}: read {len(data)} of {end - start} bytes at {start}")
        return self._count(data)

    def exists(self, name: str) -> bool:
        try:
            self._call(name, "head_object", Key=self._key(name))
        except FileNotFoundError:
            return False
        return True

    def size(self, name: str) -> int:
        """The object's size in bytes."""
        return int(self._call(name, "head_object", Key=self._key(name))["ContentLength"])

    def write(self, name: str, data: bytes) -> None:
        self._call(name, "put_object", Key=self._key(name), Body=data)

    def list_names(self) -> list[str]:
        """Names of the objects directly under the prefix."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        names, token = [], None
        while True:
            kwargs = {"Prefix": prefix, "Delimiter": "/", **({"ContinuationToken": token} if token else {})}
            page = self._call("", "list_objects_v2", **kwargs)
            names += [item["Key"][len(prefix) :] for item in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return names


def _read(body, most: int) -> bytes:
    """Up to `most` bytes of an answer's body; OSError (a counted skip of a range) if the read fails."""
    from botocore.exceptions import BotoCoreError

    try:
        return body.read(most)
    except BotoCoreError as exc:  # a read timeout, a body cut short
        raise OSError(str(exc)) from None


def _client_error(exc, url: str, bucket: str) -> Exception:
    """The one line for an S3 error answer (FileNotFoundError for a missing key: the caller words it)."""
    error = exc.response.get("Error", {})
    code, status = str(error.get("Code", "")), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        return MsaDistError(
            f"{url}: the bucket {bucket} does not exist (at this endpoint: check the URL and "
            "AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3)"
        )
    if code in ("NoSuchKey", "404", "NotFound"):
        return FileNotFoundError(url)
    if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return MsaDistError(
            f"{url}: access denied ({code}): check the credentials (AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY / AWS_PROFILE) and the bucket's policy"
        )
    if code in ("SlowDown", "503", "ServiceUnavailable", "Throttling", "RequestLimitExceeded") or status == 503:
        return MsaDistError(
            f"{url}: the store is throttling requests ({code}) after every retry "
            f"(AWS_MAX_ATTEMPTS): lower data.workers x data.read_threads, or raise AWS_MAX_ATTEMPTS"
        )
    return MsaDistError(f"{url}: {code or status}: {error.get('Message', exc)}")
