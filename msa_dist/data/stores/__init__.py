"""Where a shard set lives: a local folder, `file://`, `http(s)://` (Range requests) or any fsspec URL.

The loader never streams a whole shard: it asks a store for byte ranges (`read_range`), so each
reader fetches only its own samples. A store counts the bytes it returns (`bytes_read`, shared
with the loader's worker processes) so that `bench data` can report bytes per sample.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from msa_dist.common.errors import MsaDistError
from msa_dist.common.urls import REDACTED
from msa_dist.data.stores.base import MissingFile, ShardStore, is_url
from msa_dist.data.stores.fsspec_store import FsspecStore
from msa_dist.data.stores.http import HttpStore
from msa_dist.data.stores.local import LocalStore

__all__ = ["FsspecStore", "HttpStore", "LocalStore", "MissingFile", "ShardStore", "is_url", "open_store"]


def open_store(location: str | Path) -> ShardStore:
    """The store for a shard location: a folder, `file://...`, `http(s)://...` or an fsspec URL."""
    location = str(location)
    if not is_url(location):
        return LocalStore(location)
    if REDACTED in location:
        raise MsaDistError(
            f"{location}: this URL's secrets were redacted when it was written down; give the "
            "shard URL again (e.g. --shards URL or data.shards=URL)"
        )
    scheme = location.split("://", 1)[0].lower()
    if scheme == "file":
        return LocalStore(urllib.parse.unquote(urllib.parse.urlsplit(location).path))
    if scheme in ("http", "https"):
        return HttpStore(location)
    if scheme == "s3":
        from msa_dist.data.stores.s3 import S3Store

        return S3Store(location)
    return FsspecStore(location)
