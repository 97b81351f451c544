"""A BERT-base + ResNet-50 checkpoint (model + AdamW state) saved to a store two ways: save time and bytes uploaded.

  project: files.save_checkpoint into local scratch (atomic, as every run does), then the upload of
           each file and the commit (engine/checkpoint/remote.py: sha256 of each file, commit.json,
           latest) - what `--run-dir s3://...` does;
  dcp:     torch.distributed.checkpoint.save with an FsspecWriter straight to the store (its
           .metadata, written last, is DCP's own commit marker).

The store: by default a local folder through fsspec's file:// filesystem (--store DIR), so the
times are the CPU and disk work of each path (serialising, hashing, copying) without a network;
on a real bucket each byte also costs 1/bandwidth, the same for both. `--moto` uses moto's S3
server on 127.0.0.1 instead: it holds every object in memory (~10 GB of RSS for these ~1.6 GB
saves) and, with s3fs's default 50 MB parts, fails CompleteMultipartUpload of the ~1 GB file
inside moto ("seek of closed file"), so it sends 1 GiB parts. Random weights
(model.text.name=bert-base-random, no downloads): shapes are what matter. One JSON line per save.

  python benchmarks/store_save.py --repeats 2 [--store /fast/disk/dir] [--moto]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PART_BYTES = 1 << 30
OVERRIDES = [
    "model.text.name=bert-base-random",
    "model.image.weights=none",
    "backend.precision=fp32",
    "backend.device=cpu",
    "data.max_length=128",
    "train.batch_size=2",
]


class _VocabSize:
    def __len__(self) -> int:
        return 30522


def _one_step(backend, cfg) -> None:
    """One optimizer step, so AdamW's moments exist as in any checkpoint after step 1."""
    batch, size, length = cfg.train.batch_size, cfg.data.image_size, cfg.data.max_length
    logits = backend.model(
        input_ids=torch.randint(0, 30522, (batch, length)),
        attention_mask=torch.ones(batch, length, dtype=torch.long),
        images=torch.randn(batch, 3, size, size),
    )
    backend.backward(torch.nn.functional.cross_entropy(logits.float(), torch.zeros(batch, dtype=torch.long)))
    backend.step(True)


def _project(backend, store, scratch: Path, step: int) -> dict:
    from msa_dist.engine.checkpoint import files as ckpt
    from msa_dist.engine.checkpoint import remote

    client = {"train_state": {"step": step}, "data": {}, "config": {}, "layout": {}}
    t0 = time.perf_counter()
    step_dir = ckpt.save_checkpoint(backend, scratch, step, client, keep_last=1, private=True)
    t1 = time.perf_counter()
    uploaded = remote.upload_part(store, step_dir, 0)
    remote.commit(store, step_dir.name, 1, keep_last=1)
    t2 = time.perf_counter()
    return {
        "local_save_s": round(t1 - t0, 2),
        "upload_s": round(t2 - t1, 2),
        "save_s": round(t2 - t0, 2),
        "bytes": uploaded,
    }


def _dcp(backend, url: str, store, step: int) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter  # not exported at the top in torch 2.14

    state = {"model": backend.module.state_dict(), "optim": backend.optimizer.state_dict()}
    t0 = time.perf_counter()
    dcp.save(state, storage_writer=FsspecWriter(f"{url}/dcp/step-{step:07d}"))
    seconds = time.perf_counter() - t0
    uploaded = sum(store.sizes(f"dcp/step-{step:07d}").values())
    store.remove(f"dcp/step-{step:07d}")
    return {"save_s": round(seconds, 2), "bytes": uploaded}


class _FolderStore:
    """A RunStore over a local folder through fsspec's file:// filesystem (not a run dir scheme)."""

    @staticmethod
    def open(root: Path):
        import fsspec

        from msa_dist.engine.run.store import RunStore

        store = RunStore.__new__(RunStore)
        store.url, store.attempts, store.pause_s, store.protocol = f"file://{root}", 1, 0.0, "file"
        store.fs, store.root = fsspec.filesystem("file", auto_mkdir=True), str(root)
        return store


@contextlib.contextmanager
def _moto_store():
    """moto's S3 server on 127.0.0.1 with bucket `bench`; yields (store, url)."""
    import boto3
    import fsspec
    import moto.server as moto_server

    from msa_dist.engine.run.store import RunStore

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_S3=f"http://{host}:{port}",
    )
    fsspec.config.conf["s3"] = {"default_block_size": PART_BYTES}  # see the module docstring
    try:
        boto3.client("s3").create_bucket(Bucket="bench")
        store = RunStore("s3://bench/run")
        put_file = store.fs.put_file
        store.fs.put_file = lambda lpath, rpath, **kw: put_file(lpath, rpath, chunksize=PART_BYTES, **kw)
        yield store, "s3://bench/run"
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="saves of each kind")
    parser.add_argument("--store", default=None, help="the store folder (default: a temporary dir)")
    parser.add_argument("--moto", action="store_true", help="moto's S3 server on 127.0.0.1 as the store")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from msa_dist.bench.build import bench_model
    from msa_dist.config.schema import load_config
    from msa_dist.engine.backends import build_backend
    from msa_dist.engine.runtime import read_env

    cfg = load_config(str(REPO / "configs" / "bert_resnet50.yaml"), OVERRIDES)
    backend = build_backend(cfg.backend, read_env("cpu"))
    model = bench_model(cfg, _VocabSize())
    params = sum(p.numel() for p in model.parameters())
    backend.prepare(model, cfg.optim, total_steps=100, grad_accum_steps=1, micro_batch_size=cfg.train.batch_size)
    _one_step(backend, cfg)
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="store-save-scratch-")))
        if args.moto:
            store, url = stack.enter_context(_moto_store())
        else:
            root = Path(args.store or stack.enter_context(tempfile.TemporaryDirectory(prefix="store-save-store-")))
            store, url = _FolderStore.open(root), f"file://{root}"
        for i in range(args.repeats):
            for kind in ("project", "dcp"):
                if kind == "project":
                    row = _project(backend, store, scratch / "checkpoints", i + 1)
                else:
                    row = _dcp(backend, url, store, i + 1)
                print(json.dumps({"kind": kind, "store": store.protocol, "params": params, **row}), flush=True)


if __name__ == "__main__":
    main()
