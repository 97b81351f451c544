"""The whole cloud path: a run dir on S3 (moto's server on 127.0.0.1), shards on S3, two torchrun
nodes on loopback, each with a scratch folder of its own and no folder shared between them. One node
is lost and the survivor goes on; then both are lost; a fresh pair with new empty scratch folders
resumes from S3 and ends bit-equal to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import torch
from dist_utils import REPO, check, child_env, finish, free_port, run, torchrun_cmd, wait_for, write_config
from s3_server import SECRET, moto_s3

from msa_dist.data.shards import build_shards
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.engine.checkpoint.safe_load import load_tensors

ENTRY = str(Path(__file__).parents[1] / "helpers" / "cluster_entry.py")
RUN = "s3://runs/r"
# 96 train pairs, 4 per micro batch, 8 per step: 12 steps per epoch, a checkpoint at each epoch end
ARGS = (
    "backend.name=ddp",
    "model.modality=text",
    "train.batch_size=4",
    "train.global_batch_size=8",
    "train.epochs=2",
    "checkpoint.keep_last=100",
    "checkpoint.lock_lease_s=3",
)

pytestmark = pytest.mark.slow


def _client(env: dict):
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def _get(client, key: str) -> bytes | None:
    try:
        return client.get_object(Bucket="runs", Key=f"r/{key}")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


def _node(args: list[str], log: Path, endpoint: str, env: dict, nnodes: str = "2", restarts: int = 0):
    """One torchrun agent with 1 worker, in a session of its own (a separate host)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", nnodes, "--nproc_per_node", "1"]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "s3run"]
    cmd += ["--max-restarts", str(restarts), "--monitor-interval", "0.5", *args]
    out = log.open("w")
    return subprocess.Popen(
        cmd, cwd=REPO, env={**child_env(), **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _kill(node: subprocess.Popen) -> None:
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=30)


def _pair(tmp: Path, name: str, config: Path, env: dict, resume: bool, **node_env) -> list[subprocess.Popen]:
    """Two nodes (node 0 started first: it hosts the rendezvous and is rank 0), each with its own new
    empty scratch folder and token cache."""
    port = free_port()
    conf = "keep_alive_interval=1,keep_alive_max_attempt=3,last_call_timeout=20,join_timeout=120"
    nodes = []
    for i in range(2):
        scratch, keys = tmp / f"{name}-scratch{i}", tmp / f"{name}-keys{i}"
        keys.mkdir(parents=True)
        args = [ENTRY, "train", "--config", str(config), "--run-dir", RUN, "--scratch", str(scratch), *ARGS]
        args = ["--rdzv-conf", conf, *args, *(["--resume", "auto"] if resume else [])]
        extra = {"MSA_TEST_KEY_LOG": str(keys), "MSA_DIST_CACHE": str(tmp / f"cache{i}"), **node_env}
        nodes.append(_node(args, tmp / f"{name}{i}.log", f"127.0.0.1:{port}", {**env, **extra}, "1:2", 3))
        if i == 0:
            wait_for(lambda: _listening(port), nodes[0], timeout=90)
    return nodes


def _went_on(metrics: Path) -> bool:
    """The survivor logged its resume at world size 1 and a step trained after it."""
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    kinds = [json.loads(line)["type"] for line in lines if line.endswith("}")]
    return "resume" in kinds and kinds[kinds.index("resume") + 1 :].count("train") >= 1


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3run")
    raw = write_synthetic_dataset(root / "raw", n_labelled=120, n_test=10, image_px=32)
    build_shards(raw, root / "shards", val_fraction=0.2, seed=0, shard_size=40)
    return root / "shards"


def test_a_bucket_that_refuses_writes_and_a_second_job_are_one_line_at_start(shards, tmp_path):
    """No bucket (or no right to write to it): one line before any training. A live lease on the
    prefix: a second `msa-dist train` is refused in one line, naming the holder."""
    from msa_dist.engine.run.store import RunStore
    from msa_dist.engine.run.store_lock import StoreLock

    config = write_config(tmp_path / "c.yaml", shards, "train.epochs=1")
    with moto_s3("runs") as env:
        cmd = [sys.executable, "-m", "msa_dist", "train", "--config", str(config), "--scratch", str(tmp_path / "s")]
        result = run([*cmd, "--run-dir", "s3://no-such-bucket/r"], timeout=120, **env)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert "cannot write to the run dir s3://no-such-bucket/r" in result.stderr
        os.environ.update(env)  # this process plays the live run: its lease on s3://runs/r
        try:
            with StoreLock(RunStore(RUN), lease_s=60):
                result = run([*cmd, "--run-dir", RUN, "--resume", "auto"], timeout=120, **env)
        finally:
            for key in env:
                os.environ.pop(key, None)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert f"s3://runs/r is in use by a live run (host={socket.gethostname()} pid={os.getpid()}" in result.stderr


@pytest.mark.cluster
@pytest.mark.distributed
def test_nodes_lost_and_replaced_resume_from_s3_bit_equal(shards, tmp_path):
    with moto_s3("runs", "data") as env:
        client = _client(env)
        for path in sorted(shards.iterdir()):
            client.put_object(Bucket="data", Key=f"set/{path.name}", Body=path.read_bytes())
        config = write_config(tmp_path / "c.yaml", "s3://data/set")
        # the reference: one uninterrupted 2-rank run, local run dir; its WordPiece is cached in
        # cache0, which node 0 of the first pair reads (tokenizers order ties differently per process)
        reference = tmp_path / "reference"
        cache = {"MSA_DIST_CACHE": str(tmp_path / "cache0")}
        check(
            run(
                torchrun_cmd(
                    [ENTRY, "train", "--config", str(config), "--run-dir", str(reference), *ARGS], module=None
                ),
                timeout=300,
                **env,
                **cache,
            )
        )

        # the first pair: node 1 lost after the first epoch's checkpoint; node 0 goes on alone
        slow = {"MSA_TEST_BATCH_DELAY_S": "0.3"}
        nodes = _pair(tmp_path, "a", config, env, resume=False, **slow)
        try:
            wait_for(lambda: _get(client, "checkpoints/latest") == b"step-0000012", nodes[0], timeout=300)
            _kill(nodes[1])
            survivor = tmp_path / "a-scratch0" / "msa-dist-rank0" / "metrics.jsonl"
            wait_for(lambda: _went_on(survivor), nodes[0], timeout=300)  # resumed from S3, one step alone
            _kill(nodes[0])  # both lost, mid-epoch 2: the store's latest is still the 2-rank epoch end
        finally:
            for node in nodes:
                _kill(node)
        resumes = [json.loads(line) for line in survivor.read_text().splitlines() if '"resume"' in line]
        assert [r["world_size"] for r in resumes] == [1], resumes  # the survivor went on, at world size 1
        assert _get(client, "checkpoints/latest") == b"step-0000012"
        assert _get(client, "checkpoints/step-0000012/commit.json") is not None

        # a fresh pair, new empty scratch folders: it waits out the dead survivor's lease, then resumes
        expires = json.loads(_get(client, ".lock") or b"{}").get("expires_at", 0)
        while time.time() <= expires:  # bounded by checkpoint.lock_lease_s=3
            time.sleep(0.1)
        nodes = _pair(tmp_path, "b", config, env, resume=True)
        try:
            codes = [finish(node, tmp_path / f"b{i}.log", timeout=300) for i, node in enumerate(nodes)]
        finally:
            for node in nodes:
                _kill(node)
        logs = [(tmp_path / f"b{i}.log").read_text() for i in range(2)]
        assert codes == [0, 0], [log[-3000:] for log in logs]

        latest = _get(client, "checkpoints/latest").decode()
        (tmp_path / "final.pt").write_bytes(_get(client, f"checkpoints/{latest}/model.pt"))
        ours, ref_step = load_tensors(tmp_path / "final.pt"), (reference / "checkpoints" / "latest").read_text()
        theirs = load_tensors(reference / "checkpoints" / ref_step / "model.pt")
        assert latest == ref_step
        assert sorted(ours) == sorted(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), "not bit-equal to the uninterrupted run"
        metrics = [json.loads(line) for line in _get(client, "metrics.jsonl").decode().splitlines()]
        ref_metrics = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
        losses = {r["step"]: r["loss"] for r in metrics if r["type"] == "train"}
        assert losses == {r["step"]: r["loss"] for r in ref_metrics if r["type"] == "train"}

        # the credentials came from the environment and are in no file of the run, up or down
        listed = client.list_objects_v2(Bucket="runs", Prefix="r/")["Contents"]
        for obj in listed:
            assert SECRET.encode() not in _get(client, obj["Key"][2:]), obj["Key"]
        for path in tmp_path.rglob("*"):
            if path.is_file() and "scratch" in str(path):
                assert SECRET.encode() not in path.read_bytes(), path
