"""Secrets in shard URLs (issue 23, item 8): a password in the URL's userinfo and a signature in its query
reach the server (basic auth, the query on every request) and nothing else: not the Host header, not a
message, not one byte of any file a training run writes."""

from __future__ import annotations

import base64
import sys
import threading
from pathlib import Path

import pytest
from dist_utils import TINY

from msa_dist.common.errors import MsaDistError
from msa_dist.common.urls import redact_text, redact_url
from msa_dist.config.schema import load_config, to_dict
from msa_dist.data.loading.reader import ShardSet
from msa_dist.data.shards import build_shards
from msa_dist.data.stores import HttpStore, open_store
from msa_dist.data.stores.serve import RangeHandler, serving
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.engine import trainer

USER, PASSWORD, SIGNATURE = "reader", "Pw-s3cr3t-9431", "SIG-77c0ffee"
SEEN: list[tuple[str, str, str]] = []  # (path with query, Authorization, Host) of every request
_LOCK = threading.Lock()


class AuthHandler(RangeHandler):
    """The shard server, answering 403 unless the request has the basic auth and the signature."""

    def _answer(self, body: bool) -> None:
        auth, host = self.headers.get("Authorization", ""), self.headers.get("Host", "")
        with _LOCK:
            SEEN.append((self.path, auth, host))
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if auth != expected or not self.path.endswith(f"?X-Amz-Signature={SIGNATURE}"):
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super()._answer(body)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("secrets")
    raw = write_synthetic_dataset(root / "raw", n_labelled=40, n_test=4, image_px=32)
    build_shards(raw, root / "www" / "x", val_fraction=0.2, seed=0, shard_size=20)
    with serving(root / "www", handler=AuthHandler) as base:
        yield base


def _secret_url(base: str, user: str = f"{USER}:{PASSWORD}@") -> str:
    return base.replace("http://", f"http://{user}") + f"/x?X-Amz-Signature={SIGNATURE}"


def test_redact_url_and_text():
    url = f"https://{USER}:{PASSWORD}@host:8443/shards?X-Amz-Signature={SIGNATURE}&X-Amz-Expires=60"
    assert redact_url(url) == "https://REDACTED@host:8443/shards?X-Amz-Signature=REDACTED&X-Amz-Expires=REDACTED"
    assert redact_text(f"data.shards={url} and more") == f"data.shards={redact_url(url)} and more"
    assert redact_url("/local/folder") == "/local/folder" and redact_url("s3://bucket/p") == "s3://bucket/p"
    cfg = load_config(base=TINY, overrides=[f"data.shards={url}"])
    assert PASSWORD not in str(to_dict(cfg)) and SIGNATURE not in str(to_dict(cfg))
    assert cfg.data.shards == url  # the config itself keeps the URL: the store needs it


def test_auth_and_query_reach_the_server_and_nothing_else(served, monkeypatch):
    SEEN.clear()
    shard_set = ShardSet(_secret_url(served))
    assert shard_set.samples("train") == 32
    assert SEEN and all(host.startswith("127.0.0.1:") for _, _, host in SEEN)  # no user:pass@ in the host
    assert PASSWORD not in shard_set.location and PASSWORD not in shard_set.store.url("a.tar")
    # the credentials from the environment instead of the URL, for the host they were given for
    monkeypatch.setenv("MSA_DIST_HTTP_HOST", "127.0.0.1")
    monkeypatch.setenv("MSA_DIST_HTTP_USER", USER)
    monkeypatch.setenv("MSA_DIST_HTTP_PASSWORD", PASSWORD)
    assert ShardSet(_secret_url(served, user="")).samples("val") == 8


def test_errors_do_not_show_the_secrets(served):
    store = open_store(_secret_url(served))
    assert isinstance(store, HttpStore)
    with pytest.raises(MsaDistError) as missing:
        store.read("no-such-file.json")
    wrong = open_store(_secret_url(served, user=f"{USER}:wrong-{PASSWORD}@"))
    with pytest.raises(MsaDistError, match="access denied") as denied:
        wrong.read("manifest.json")
    with pytest.raises(MsaDistError, match="redacted") as redacted:
        open_store(redact_url(_secret_url(served)))
    for err in (missing, denied, redacted):
        assert PASSWORD not in str(err.value) and SIGNATURE not in str(err.value), str(err.value)


def test_a_run_writes_no_secret_anywhere(served, tmp_path, monkeypatch):
    url = _secret_url(served)
    monkeypatch.setattr(sys, "argv", ["msa-dist", "train", "--config", "c.yaml", f"data.shards={url}"])
    monkeypatch.setenv("MSA_DIST_CACHE", str(tmp_path / "cache"))
    cfg = load_config(
        base=TINY,
        overrides=[f"data.shards={url}", "train.epochs=1", "data.workers=1", "log.report_to=[jsonl,tensorboard]"],
    )
    run_dir = tmp_path / "run"
    trainer.train(cfg, run_dir)
    files = [p for p in Path(run_dir).rglob("*") if p.is_file()]
    assert any(p.name == "state.pt" for p in files) and any("tfevents" in p.name for p in files)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "run_info.json").is_file()
    for path in files:
        data = path.read_bytes()
        assert PASSWORD.encode() not in data and SIGNATURE.encode() not in data, path
    assert b"REDACTED@127.0.0.1" in (run_dir / "config.yaml").read_bytes()
