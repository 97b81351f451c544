"""Shards at a URL: a real HTTP server on 127.0.0.1 that honours Range requests (data/stores/serve.py),
training and predicting from it, what a run reads, `shards index` for sets built elsewhere."""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler

import pytest
import webdataset as wds
from dist_utils import train_losses, write_config

from msa_dist.common.errors import MsaDistError
from msa_dist.config.schema import load_config
from msa_dist.data.format.index import index_name
from msa_dist.data.format.manifest import load_manifest
from msa_dist.data.indexer import index_shard_set
from msa_dist.data.loading.loader import StreamSpec, build_loader, iter_texts
from msa_dist.data.loading.reader import SampleReader, ShardSet
from msa_dist.data.shards import build_shards
from msa_dist.data.stores.serve import RangeHandler, serving
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.data.verify import verify_shards
from msa_dist.engine import trainer
from msa_dist.inference.evaluate import predict
from msa_dist.models.tokenizer import train_wordpiece_tokenizer

SERVED: Counter = Counter()  # bytes sent per file name
_LOCK = threading.Lock()


class CountingHandler(RangeHandler):
    """The shard server, counting the bytes it sends per file (each response's Content-Length)."""

    def send_header(self, keyword, value):
        if keyword == "Content-Length":
            with _LOCK:
                SERVED[self.path.rsplit("/", 1)[-1]] += int(value)
        super().send_header(keyword, value)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """96 train pairs in uneven shards (40, 40, 16), 24 val, 10 test."""
    root = tmp_path_factory.mktemp("remote")
    raw = write_synthetic_dataset(root / "raw", n_labelled=120, n_test=10, image_px=32)
    build_shards(raw, root / "shards", val_fraction=0.2, seed=0, shard_size=40)
    return root / "shards"


@pytest.fixture(scope="module")
def url(shards):
    with serving(shards, handler=CountingHandler) as base:
        yield base


def _tar_bytes(split: str, manifest: dict) -> int:
    return sum(s["bytes"] for s in manifest["splits"][split]["shards"])


@pytest.mark.slow
def test_train_and_predict_from_http_equal_the_local_copy(shards, url, tmp_path, monkeypatch):
    monkeypatch.setenv("MSA_DIST_CACHE", str(tmp_path / "cache"))
    overrides = ("train.epochs=1", "data.workers=2", "model.text.tiny_dropout=0.1")
    local, remote = tmp_path / "local", tmp_path / "remote"
    trainer.train(load_config(write_config(tmp_path / "l.yaml", shards, *overrides)), local)
    shutil.copytree(local / "tokenizer", remote / "tokenizer")  # WordPiece training differs between processes
    SERVED.clear()
    trainer.train(load_config(write_config(tmp_path / "r.yaml", url, *overrides)), remote)  # type: ignore[arg-type]
    assert train_losses(remote) == train_losses(local) and len(train_losses(local)) == 12
    # what the run read: the train split once, the val split once (one evaluation), plus indexes and manifest
    manifest = load_manifest(shards)
    tar_bytes = sum(n for name, n in SERVED.items() if name.endswith(".tar"))
    assert tar_bytes <= 1.05 * (_tar_bytes("train", manifest) + _tar_bytes("val", manifest))
    for run in (local, remote):
        assert predict(str(run), url, str(tmp_path / f"{run.name}.csv")) == 10
    assert (tmp_path / "local.csv").read_text() == (tmp_path / "remote.csv").read_text()


def test_the_tokenizer_pass_reads_only_the_texts(shards, url):
    SERVED.clear()
    texts = list(iter_texts(url, "train"))
    manifest = load_manifest(shards)
    assert len(texts) == 96
    assert sum(n for name, n in SERVED.items() if name.endswith(".tar")) == sum(len(t.encode()) for t in texts)
    assert sum(n for name, n in SERVED.items() if name.endswith(".tar")) < 0.05 * _tar_bytes("train", manifest)


def test_a_server_without_range_requests_is_one_clear_error(shards):
    tokenizer = train_wordpiece_tokenizer(["a b c"] * 3, vocab_size=50)
    with serving(shards, handler=SimpleHTTPRequestHandler) as base:
        cfg = load_config(base={"data": {"workers": 0}}).data
        with pytest.raises(MsaDistError, match="ignores Range requests"):
            build_loader(cfg, base, StreamSpec("val", False, 4), tokenizer)  # before any worker starts
        with pytest.raises(MsaDistError, match="no manifest.json at http"):
            build_loader(cfg, base + "/nothing-here", StreamSpec("val", False, 4), tokenizer)


def test_verify_over_http_and_a_stale_index(shards, url, tmp_path):
    assert verify_shards(url)["samples"] == 130
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    index = copy / index_name("val-000000.tar")
    raw = json.loads(index.read_text())
    raw["starts"][1] += 512
    index.write_text(json.dumps(raw))
    with pytest.raises(MsaDistError, match="index of .*val-000000.tar does not match the shard"):
        verify_shards(copy)


def test_shards_index_makes_a_foreign_set_trainable(shards, tmp_path):
    """Tars written by webdataset alone (no manifest, no index): `shards index` adds both."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    samples = list(wds.DataPipeline(wds.SimpleShardList([str(shards / "train-000000.tar")]), wds.tarfile_to_samples()))
    for name, part in (("train-a.tar", samples[:25]), ("train-b.tar", samples[25:]), ("val-0.tar", samples[:8])):
        with wds.TarWriter(str(foreign / name)) as sink:
            for s in part:
                sink.write({k: v for k, v in s.items() if k != "__url__"})
    assert index_shard_set(str(foreign)) == {"train": 40, "val": 8}
    manifest = load_manifest(foreign)
    labels = Counter(int(s["cls"]) for s in samples)
    assert manifest["splits"]["train"]["class_counts"] == {
        "positive": labels[0],
        "neutral": labels[1],
        "negative": labels[2],
    }
    assert verify_shards(foreign)["samples"] == 48
    tokenizer = train_wordpiece_tokenizer(iter_texts(str(foreign)), vocab_size=80)
    keys = [
        k
        for b in build_loader(
            load_config(base={"data": {"workers": 0, "image_size": 32, "resize_size": 32}}).data,
            str(foreign),
            StreamSpec("train", True, 8),
            tokenizer,
        )
        for k in b["keys"]
    ]
    assert sorted(keys) == sorted(s["__key__"] for s in samples)


def test_fsspec_and_file_urls_read_what_the_folder_holds(shards):
    """memory:// stands for s3:// or gs:// (the same fsspec calls: cat_file with start and end)."""
    import fsspec

    memory = fsspec.filesystem("memory")
    for path in shards.iterdir():
        if path.is_file():
            memory.pipe_file(f"memory://msa-test/{path.name}", path.read_bytes())
    tokenizer = train_wordpiece_tokenizer(iter_texts(str(shards)), vocab_size=80)
    cfg = load_config(base={"data": {"workers": 0, "image_size": 32, "resize_size": 32}}).data
    spec = StreamSpec("train", True, 8, seed=2)
    local = [(b["keys"], b["images"]) for b in build_loader(cfg, str(shards), spec, tokenizer)]
    for location in ("memory://msa-test", shards.as_uri()):
        got = [(b["keys"], b["images"]) for b in build_loader(cfg, location, spec, tokenizer)]
        assert [k for k, _ in got] == [k for k, _ in local]
        assert all(a.equal(b) for (_, a), (_, b) in zip(got, local))
    assert verify_shards("memory://msa-test")["samples"] == 130


@pytest.mark.parametrize("threads,ahead,gap", [(1, 1, 0), (8, 3, 4096), (4, 16, 1 << 20)])
def test_read_ahead_gives_what_fetch_gives_batch_by_batch(shards, url, threads, ahead, gap):
    """Across an epoch boundary, with any pool, window and gap: the same samples in the same slots."""
    from msa_dist.data.loading.loader import _Batches, _train_plan

    reader = SampleReader(ShardSet(url), "train")
    cfg, spec = load_config().data, StreamSpec("train", True, 8, seed=7)
    batches, orders = _Batches(cfg, reader, _train_plan(cfg, reader, spec, end_epoch=2), None, spec), {}
    items = [batches._ids(t, orders) for t in range(2 * 96 // 8)]
    assert items[11][:2] == (0, 11) and items[12][:2] == (1, 0)
    got = list(reader.read_ahead(iter(items), threads, ahead, gap))
    assert [item[:2] for item, _ in got] == [item[:2] for item in items]
    for (_, _, ids), (_, samples) in zip(items, got):
        assert samples == reader.fetch(ids)


class GateHandler(RangeHandler):
    """Holds the first PARTIES ranged reads of a tar until that many are in flight at once."""

    PARTIES = 3
    arrived, alone = 0, False
    all_in = threading.Event()  # set once PARTIES reads were waiting together
    lock = threading.Lock()

    def _answer(self, body: bool) -> None:
        if self.path.endswith(".tar") and "Range" in self.headers:
            with self.lock:
                GateHandler.arrived += 1  # the class itself: serving() subclasses it
                mine = GateHandler.arrived
            if mine == self.PARTIES:
                self.all_in.set()
            elif mine < self.PARTIES and not self.all_in.wait(timeout=20):
                GateHandler.alone = True  # the others never came while this one waited
        super()._answer(body)


def test_a_worker_keeps_several_reads_in_flight(shards):
    """The first three requests are answered only once all three are in flight: a loader that reads
    one run after another would never get the three there together."""
    tokenizer = train_wordpiece_tokenizer(["a b c"] * 3, vocab_size=50)
    cfg = load_config(
        base={
            "data": {
                "workers": 0,
                "image_size": 32,
                "resize_size": 32,
                "chunk_samples": 1,
                "read_threads": 4,
                "read_gap_bytes": 0,
            }
        }
    ).data
    GateHandler.arrived, GateHandler.alone = 0, False
    GateHandler.all_in.clear()
    with serving(shards, handler=GateHandler) as base:
        loader = build_loader(cfg, base, StreamSpec("train", True, 8, seed=1), tokenizer)
        keys = [k for batch in loader for k in batch["keys"]]
    assert GateHandler.all_in.is_set() and not GateHandler.alone and loader.corrupt.count == 0 and len(keys) == 96
