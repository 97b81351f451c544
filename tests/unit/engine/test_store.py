"""engine/run/store.py and store_lock.py on fsspec's memory:// store: URL checks, bounded retries,
a store that denies writes, and the lease lock (S3's conditional writes: tests/integration/test_store_run.py)."""

from __future__ import annotations

import json

import pytest

from msa_dist.common.errors import MsaDistError
from msa_dist.engine.run.store import RunStore, StoreError, check_run_dir, is_remote
from msa_dist.engine.run.store_lock import LOCK, StoreLock


@pytest.fixture
def store(request):
    return RunStore(f"memory://runs/{request.node.name}", attempts=3, pause_s=0)


@pytest.mark.parametrize(
    ("run_dir", "says"),
    [
        ("http://host/r", "http:// cannot hold a run dir"),
        ("foo://bucket/r", "foo:// cannot hold a run dir"),
        ("s3:/bucket/r", "needs two slashes (s3://bucket/r)"),
        ("s3://user:pw@bucket/r", "no credentials in the URL"),
    ],
)
def test_a_run_dir_url_that_is_no_store_is_one_line(run_dir, says):
    with pytest.raises(MsaDistError, match=says.replace("(", r"\(").replace(")", r"\)")) as err:
        check_run_dir(run_dir)
    assert "pw" not in str(err.value) and "\n" not in str(err.value)


def test_local_folders_and_stores_pass():
    for ok in ("runs/x", "/abs/runs", "s3://bucket/r", "gs://b/r", "memory://b/r"):
        check_run_dir(ok)
    assert is_remote("s3://b/r") and not is_remote("runs/s3") and not is_remote("runs/s3:")


def test_files_round_trip_and_listing(store, tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    store.put_file(tmp_path / "f", "a/f")
    store.write("a/b/g", b"12345")
    assert store.sizes("a") == {"f": 3, "b/g": 5}
    assert store.children("a") == ["b", "f"]
    store.get_file("a/b/g", tmp_path / "down" / "g")
    assert (tmp_path / "down" / "g").read_bytes() == b"12345"
    assert store.read("missing") is None
    assert store.create("x", b"1") and not store.create("x", b"2") and store.read("x") == b"1"
    store.remove("a")
    assert store.sizes("a") == {}


def test_a_failing_store_is_retried_then_one_line(store, monkeypatch):
    calls = []

    def flaky(path, data, **kwargs):
        calls.append(path)
        raise OSError("503 SlowDown")

    monkeypatch.setattr(store.fs, "pipe_file", flaky)
    with pytest.raises(StoreError, match=r"cannot write memory://runs/.*/k: 503 SlowDown \(3 attempt\(s\)\)"):
        store.write("k", b"v")
    assert len(calls) == 3


def test_a_store_that_denies_writes_fails_the_probe_at_once(store, monkeypatch):
    calls = []

    def denied(path, data, **kwargs):
        calls.append(path)
        raise PermissionError("AccessDenied")

    monkeypatch.setattr(store.fs, "pipe_file", denied)
    with pytest.raises(StoreError, match="cannot write to the run dir memory://runs/.*: .*AccessDenied") as err:
        store.probe(rank=0)
    assert len(calls) == 1 and "\n" not in str(err.value)  # a denial is not retried


def test_a_second_job_is_refused_while_the_lease_lives(store):
    with StoreLock(store, lease_s=30):
        held = json.loads(store.read(LOCK))
        with pytest.raises(MsaDistError, match=f"in use by a live run .*pid={held['pid']}") as err:
            StoreLock(store, lease_s=30).acquire()
        assert "\n" not in str(err.value)
    assert store.read(LOCK) is None  # released: deleted


def test_an_expired_lease_is_taken_over(store):
    store.write(LOCK, json.dumps({"host": "gone", "pid": 1, "job": None, "restart": 0, "expires_at": 0}).encode())
    with StoreLock(store, lease_s=30):
        assert json.loads(store.read(LOCK))["host"] != "gone"


def test_a_restarted_attempt_of_the_same_job_takes_its_lease(store, monkeypatch):
    live = {"host": "h", "pid": 1, "job": "job7", "restart": 0, "expires_at": 4e9}
    store.write(LOCK, json.dumps(live).encode())
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job7")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with StoreLock(store, lease_s=30):
        assert json.loads(store.read(LOCK))["restart"] == 1
    store.write(LOCK, json.dumps({**live, "job": "other"}).encode())
    with pytest.raises(MsaDistError, match="in use by a live run"):
        StoreLock(store, lease_s=30).acquire()


def test_a_renewal_fails_once_another_writer_replaced_the_lock(store):
    lock = StoreLock(store, lease_s=30)
    with lock:
        stale = lock._etag
        assert store.replace_if(LOCK, lock._record(), stale)  # what each round of _renew does
        assert not store.replace_if(LOCK, b"{}", stale)  # the ETag it held is no longer the object's


def test_scratch_with_a_local_run_dir_warns(tmp_path, capsys):
    import torch

    from msa_dist.config.schema import CheckpointConfig
    from msa_dist.engine.run.place import open_place
    from msa_dist.engine.runtime import DistEnv

    env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    place = open_place(tmp_path / "run", str(tmp_path / "s"), CheckpointConfig(), env)
    assert place.store is None and place.local == tmp_path / "run"
    assert "--scratch has no effect" in " ".join(capsys.readouterr().out.split())


def test_a_store_run_dir_gets_a_fresh_scratch_per_rank(tmp_path, request):
    import torch

    from msa_dist.config.schema import CheckpointConfig
    from msa_dist.engine.run.place import open_place
    from msa_dist.engine.runtime import DistEnv

    (tmp_path / "msa-dist-rank1").mkdir()
    (tmp_path / "msa-dist-rank1" / "stale").write_text("an earlier run")
    env = DistEnv(rank=1, local_rank=1, world_size=2, device=torch.device("cpu"))
    place = open_place(f"memory://runs/{request.node.name}", str(tmp_path), CheckpointConfig(), env)
    assert place.local == tmp_path / "msa-dist-rank1" and not any(place.local.iterdir())
    assert place.store.sizes(".probe") == {}  # the write probe cleaned up after itself
