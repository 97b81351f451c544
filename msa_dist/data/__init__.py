"""Data: the write side here (raw course layout, synthetic data, `shards build`, indexing, `shards
show`), the shard format in `format/`, where shards live in `stores/`, and the training and
evaluation loaders in `loading/`.

The public names below are imported on first use (PEP 562), so that importing one small module of
this package (a store, the manifest) costs neither torch nor the image stack.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "build_shards": "msa_dist.data.shards",
    "verify_shards": "msa_dist.data.verify",
    "load_manifest": "msa_dist.data.format.manifest",
    "open_store": "msa_dist.data.stores",
    "ShardSet": "msa_dist.data.loading.reader",
    "StreamSpec": "msa_dist.data.loading.loader",
    "build_loader": "msa_dist.data.loading.loader",
    "EvalLoader": "msa_dist.data.loading.loader",
    "TrainStream": "msa_dist.data.loading.stream",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'msa_dist.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
