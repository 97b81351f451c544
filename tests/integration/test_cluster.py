"""A cluster on one machine: no orphaned workers, one writer per run dir, two torchrun nodes on
loopback reading shards over HTTP, and a node lost mid-epoch. Every torchrun here runs 2 ranks in
all with the tiny model of dist_utils; each agent is started in a session of its own, as on
separate hosts, so a test can SIGKILL one node's whole tree.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dist_utils import (
    REPO,
    check,
    child_env,
    final_weights,
    finish,
    free_port,
    rank_pids,
    records,
    run,
    torchrun_cmd,
    train_losses,
    wait_for,
    write_config,
)

from msa_dist.data.shards import build_shards
from msa_dist.data.stores.serve import serving
from msa_dist.data.synthetic import write_synthetic_dataset
from msa_dist.engine.run.rundir import RunDirLock
from msa_dist.inference.evaluate import predict

ENTRY = str(Path(__file__).parents[1] / "helpers" / "cluster_entry.py")
N_TEST = 10

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """96 train pairs in uneven shards (40, 40, 16), 24 val, 10 test."""
    root = tmp_path_factory.mktemp("cluster")
    raw = write_synthetic_dataset(root / "raw", n_labelled=120, n_test=N_TEST, image_px=32)
    build_shards(raw, root / "shards", val_fraction=0.2, seed=0, shard_size=40)
    return root


def _node(
    args: list[str], log: Path, endpoint: str, nnodes: str = "2", max_restarts: int = 0, **env
) -> subprocess.Popen:
    """One torchrun agent with 1 worker, as one node of an `nnodes` job: its own session."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        nnodes,
        "--nproc_per_node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        "cluster",
        "--max-restarts",
        str(max_restarts),
        "--monitor-interval",
        "0.5",
        *args,
    ]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**child_env(), **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pids: set[int], timeout: float = 15) -> set[int]:
    """Poll until none of `pids` is alive; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while {p for p in pids if _alive(p)} and time.monotonic() < deadline:
        time.sleep(0.1)
    return {p for p in pids if _alive(p)}


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


# -- item 6: no orphans, one writer -------------------------------------------------------------


def test_a_second_writer_is_refused_and_touches_nothing(data, tmp_path):
    """While a run holds RUN_DIR/.lock, `msa-dist train` (new or --resume auto) exits with one line
    naming the holder's host and pid, and leaves every file of the run dir as it was."""
    config = write_config(tmp_path / "c.yaml", data / "shards", "train.epochs=1")
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"type": "train", "step": 1}\n')
    with RunDirLock(run_dir):  # this test process plays the live run
        before = _snapshot(run_dir)
        for extra in ([], ["--resume", "auto"]):
            result = run(
                [sys.executable, "-m", "msa_dist", "train", "--config", str(config), "--run-dir", str(run_dir), *extra],
                timeout=120,
            )
            assert result.returncode == 2, result.stderr[-3000:]
            message = result.stderr.strip().splitlines()
            assert len(message) == 1, result.stderr
            assert f"host={socket.gethostname()} pid={os.getpid()}" in message[0]
            assert "in use by a live run" in message[0]
            assert _snapshot(run_dir) == before
    # the holder gone (here: released), the lock is free again
    with RunDirLock(run_dir):
        pass


@pytest.mark.cluster
@pytest.mark.distributed
def test_sigkill_of_the_agents_process_group_leaves_no_worker(data, tmp_path):
    """torch elastic puts its workers in sessions of their own; PR_SET_PDEATHSIG kills them (and
    so their loader workers) with the agent, and the run dir lock goes with rank 0."""
    config = write_config(tmp_path / "c.yaml", data / "shards", "train.epochs=1000", "data.workers=1")
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    proc = subprocess.Popen(
        torchrun_cmd(["train", "--config", str(config), "--run-dir", str(run_dir), "backend.name=ddp"]),
        cwd=REPO,
        env=child_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and len(records(run_dir, "train")) >= 2, proc)
        assert set(rank_pids(proc.pid)) == {0, 1}
        tree = _descendants(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the agent's process group: the workers are not in it
        proc.wait(timeout=30)
    orphans = _wait_gone(tree)
    for pid in orphans:  # do not leave them training on CI's cores
        os.kill(pid, signal.SIGKILL)
    assert not orphans, f"orphaned workers {orphans}\n{log.read_text()[-3000:]}"
    with RunDirLock(run_dir):  # released by the kernel
        pass


# -- item 1: two nodes on loopback ----------------------------------------------------------------

# text only, no dropout (per-rank BatchNorm statistics differ from one big batch); the global batch
# is fixed, so 1 rank accumulates 2 micro batches where 2 ranks take 1 each
DDP_ARGS = (
    "model.modality=text",
    "train.batch_size=4",
    "train.global_batch_size=8",
    "train.epochs=2",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=100",
)


def _train(config: Path, run_dir: Path, *extra: str) -> list[str]:
    return [ENTRY, "train", "--config", str(config), "--run-dir", str(run_dir), "backend.name=ddp", *extra]


@pytest.fixture(scope="module")
def one_node(data, tmp_path_factory):
    """The reference: 2 ranks under one torchrun agent, local shards."""
    root = tmp_path_factory.mktemp("one-node")
    config = write_config(root / "c.yaml", data / "shards", *DDP_ARGS)
    check(run(torchrun_cmd(_train(config, root / "run"), module=None)))
    return root / "run"


def _two_nodes(args: list[str], root: Path, nnodes: str = "2", max_restarts: int = 0, **env) -> list:
    endpoint = f"127.0.0.1:{free_port()}"
    return [_node(args, root / f"node{i}.log", endpoint, nnodes, max_restarts, **env) for i in range(2)]


@pytest.mark.cluster
@pytest.mark.distributed
def test_two_nodes_on_loopback_train_like_one_and_predict(data, one_node, tmp_path):
    """Two torchrun agents (--nnodes 2, c10d rendezvous on 127.0.0.1) as separate process trees,
    1 rank each, shards served over HTTP, one run dir: the losses of one node with 2 ranks."""
    _check_two_nodes_like_one(data, one_node, tmp_path)


@pytest.mark.cluster
@pytest.mark.distributed
def test_two_nodes_deepspeed_zero2_train_like_one_and_predict(data, tmp_path):
    """The same with DeepSpeed ZeRO-2 (its optimizer state partitioned across the two nodes)."""
    zero2 = ("backend.name=deepspeed", "backend.zero_stage=2")
    config = write_config(tmp_path / "one.yaml", data / "shards", *DDP_ARGS)
    check(run(torchrun_cmd(_train(config, tmp_path / "one", *zero2), module=None)))
    _check_two_nodes_like_one(data, tmp_path / "one", tmp_path, *zero2)


def _check_two_nodes_like_one(data: Path, one_node: Path, tmp_path: Path, *extra: str) -> None:
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    shutil.copytree(one_node / "tokenizer", run_dir / "tokenizer")  # WordPiece order differs between processes
    with serving(data / "shards") as url:
        config = write_config(tmp_path / "c.yaml", url, *DDP_ARGS)
        nodes = _two_nodes(_train(config, run_dir, *extra), tmp_path)
        codes = [finish(node, tmp_path / f"node{i}.log") for i, node in enumerate(nodes)]
    full = [(tmp_path / f"node{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], [log[-3000:] for log in full]
    # the whole log: DeepSpeed may print enough after the header (a JIT op build) to push it out of a tail
    assert "2 node(s) x 1 per node" in " ".join("".join(full).split())  # rich wraps lines
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, 25))
    assert losses == pytest.approx(train_losses(one_node), abs=1e-5)
    a, b = final_weights(run_dir), final_weights(one_node)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    outs = [tmp_path / "two.csv", tmp_path / "one.csv"]
    assert [predict(str(d), str(data / "shards"), str(out)) for d, out in zip((run_dir, one_node), outs)] == [
        N_TEST
    ] * 2
    assert outs[0].read_text() == outs[1].read_text()


# -- item 2: losing a node and going on -----------------------------------------------------------


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _trained_keys(log_dir: Path) -> dict[int, list[str]]:
    """{epoch: keys} of the micro batches that count: an attempt's batches up to the position the
    next attempt started from (the rest were trained again after the restart), all of the last."""
    attempts: dict[int, list[dict]] = {}
    for path in sorted(log_dir.glob("keys-r*-rank*.jsonl")):
        restart = int(path.name.split("-")[1][1:])
        for line in path.read_text().splitlines():
            try:
                attempts.setdefault(restart, []).append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by SIGKILL
                continue
    order = sorted(attempts)
    keys: dict[int, list[str]] = {}
    for i, restart in enumerate(order):
        stop = None
        if i + 1 < len(order):
            stop = tuple(min(r["start"] for r in attempts[order[i + 1]] if "start" in r))
        for rec in attempts[restart]:
            if "keys" in rec and (stop is None or (rec["epoch"], rec["end"]) <= stop):
                keys.setdefault(rec["epoch"], []).extend(rec["keys"])
    return keys


@pytest.mark.cluster
@pytest.mark.distributed
def test_losing_a_node_mid_epoch_the_survivor_finishes_at_world_size_1(data, one_node, tmp_path):
    """--nnodes 1:2 --max-restarts 3: SIGKILL of node 1's whole process tree mid-epoch; node 0
    re-forms the group alone, resumes from `latest` mid-epoch with the global batch kept (2 micro
    batches accumulated where 2 ranks took 1 each) and finishes with the 2-rank run's losses; every
    sample of every epoch was trained on exactly once."""
    run_dir, keys = tmp_path / "run", tmp_path / "keys"
    keys.mkdir()
    run_dir.mkdir()
    shutil.copytree(one_node / "tokenizer", run_dir / "tokenizer")
    config = write_config(tmp_path / "c.yaml", data / "shards", *DDP_ARGS)
    port = free_port()
    # Short heartbeats: the dead node leaves the rendezvous in ~3 s. Node 0 (started first: it hosts
    # the rendezvous store and, with the lower pid, is group rank 0) waits up to last_call for node 1,
    # so the first round has both; torch 2.14 hangs on a later round whose rank 0 was not rank 0
    # in the first (its MASTER_ADDR is cached from the first round and never published again).
    conf = "keep_alive_interval=1,keep_alive_max_attempt=3,last_call_timeout=20,join_timeout=120"
    env = {"MSA_TEST_KEY_LOG": str(keys), "MSA_TEST_BATCH_DELAY_S": "0.2"}
    nodes = []
    try:
        for i in range(2):
            nodes.append(
                _node(
                    ["--rdzv-conf", conf, *_train(config, run_dir)],
                    tmp_path / f"node{i}.log",
                    f"127.0.0.1:{port}",
                    "1:2",
                    3,
                    **env,
                )
            )
            if i == 0:
                wait_for(lambda: _listening(port), nodes[0], timeout=60)
        wait_for(lambda: (run_dir / "checkpoints" / "latest").is_file(), nodes[0])
        tree = {nodes[1].pid} | _descendants(nodes[1].pid)
        os.killpg(nodes[1].pid, signal.SIGKILL)
        for pid in tree:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        nodes[1].wait(timeout=30)
        assert finish(nodes[0], tmp_path / "node0.log", timeout=300) == 0, (tmp_path / "node0.log").read_text()[-4000:]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(timeout=30)
    resumes = records(run_dir, "resume")
    assert [r["world_size"] for r in resumes] == [1], resumes
    assert resumes[0]["step"] % 12 > 0, "not mid-epoch"  # 12 steps per epoch
    assert "global batch 8 = 4 micro x 2 accum x 1 ranks" in " ".join((tmp_path / "node0.log").read_text().split())
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, 25))
    assert losses == pytest.approx(train_losses(one_node), abs=1e-5)
    guids = json.loads((data / "shards" / "manifest.json").read_text())["splits"]["train"]["guids"]
    trained = _trained_keys(keys)
    assert sorted(trained) == [0, 1]
    for epoch in (0, 1):
        assert sorted(trained[epoch]) == sorted(guids), f"epoch {epoch}"
