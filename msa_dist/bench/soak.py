"""Fault soak: SIGKILL a random rank of a 2-rank DDP run K times, some of them during a checkpoint
write; torchrun restarts the group each time and it resumes from `latest` by itself. Passes when
the final weights equal an uninterrupted run's bit for bit, metrics.jsonl matches it line by line
(timing fields and resume records aside), `latest` always named a complete checkpoint, and nothing
is left half-written.

    python -m msa_dist.bench.soak --config C --workdir DIR --kills 3 [--seed 0] [overrides...]
    (launch/soak.sh is the same)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

TIMING_FIELDS = ("samples_per_s", "data_wait")  # differ run to run by nature


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(config: str, run_dir: Path, overrides: list[str], max_restarts: int, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{_free_port()}",
        "--rdzv-id",
        "soak",
        "--max-restarts",
        str(max_restarts),
        "--monitor-interval",
        "0.2",
        "-m",
        "msa_dist",
        "train",
        "--config",
        config,
        "--run-dir",
        str(run_dir),
        "backend.name=ddp",
        *overrides,
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")
    }
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)


def rank_pids(agent_pid: int) -> dict[int, int]:
    """{rank: pid} of the workers torchrun started (its children with RANK in their environment)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != agent_pid:
                continue
            env = dict(x.split("=", 1) for x in (proc / "environ").read_text().split("\0") if "=" in x)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env:
            out[int(env["RANK"])] = int(proc.name)
    return out


def comparable(run_dir: Path) -> list[dict]:
    """metrics.jsonl without resume records and timing fields."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in recs if r["type"] != "resume"]


def final_weights(run_dir: Path) -> dict:
    root = run_dir / "checkpoints"
    return torch.load(root / (root / "latest").read_text().strip() / "model.pt", weights_only=True)


class LatestWatch(threading.Thread):
    """Polls checkpoints/latest; records any moment it named a directory without client.json."""

    def __init__(self, ckpt_root: Path):
        super().__init__(daemon=True)
        self.root, self.bad, self.checks, self.stop = ckpt_root, [], 0, threading.Event()

    def run(self) -> None:
        pointer = self.root / "latest"
        while not self.stop.wait(0.005):
            try:
                name = pointer.read_text().strip()
            except OSError:
                continue
            complete = (self.root / name / "client.json").is_file()
            self.checks += 1
            try:
                same = pointer.read_text().strip() == name  # not replaced (and the old one pruned) meanwhile
            except OSError:
                same = False
            if not complete and same:
                self.bad.append(name)


def _wait(condition, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def _train_records(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_text().count('"type": "train"')
    except OSError:
        return 0


def _kill_once(proc: subprocess.Popen, run_dir: Path, during_save: bool, rng: random.Random) -> str | None:
    """SIGKILL a random rank, after a few more steps or while a checkpoint is being written."""
    if not _wait(lambda: len(rank_pids(proc.pid)) == 2 and _train_records(run_dir) > 0, proc, 300):
        return None
    ckpts = run_dir / "checkpoints"
    if during_save:
        caught = _wait(lambda: any(ckpts.glob(".tmp-step-*")), proc, 60)
        moment = "during a checkpoint write" if caught else "after waiting for a checkpoint write"
    else:
        target = _train_records(run_dir) + rng.randint(1, 4)
        _wait(lambda: _train_records(run_dir) >= target, proc, 120)
        moment = f"at train record {_train_records(run_dir)}"
    pids = rank_pids(proc.pid)
    if proc.poll() is not None or len(pids) < 2:
        return None
    rank = rng.choice(sorted(pids))
    os.kill(pids[rank], signal.SIGKILL)
    # the next kill waits for the restarted group: new worker pids
    _wait(
        lambda: (lambda now: len(now) == 2 and not set(now.values()) & set(pids.values()))(rank_pids(proc.pid)),
        proc,
        300,
    )
    return f"rank {rank} {moment}"


def soak(config: str, workdir: Path, kills: int, seed: int, overrides: list[str]) -> dict:
    """Run the reference and the soak; returns the result (`ok` and what differed)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ref, run = workdir / "reference", workdir / "soak"
    shutil.rmtree(ref, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    ref_proc = _torchrun(config, ref, overrides, 0, workdir / "reference.log")
    if ref_proc.wait(timeout=1800) != 0:
        raise RuntimeError(f"the reference run failed: see {workdir / 'reference.log'}")
    run.mkdir()
    shutil.copytree(ref / "tokenizer", run / "tokenizer")  # WordPiece's order is not the same in every process
    rng = random.Random(seed)
    proc = _torchrun(config, run, overrides, kills, workdir / "soak.log")
    watch = LatestWatch(run / "checkpoints")
    watch.start()
    events = []
    try:
        for k in range(kills):
            event = _kill_once(proc, run, during_save=k % 2 == 1, rng=rng)
            if event is None:
                break
            events.append(event)
        rc = proc.wait(timeout=1800)
    finally:
        watch.stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    watch.join()
    return _compare(ref, run, rc, events, kills, watch)


def _compare(ref: Path, run: Path, rc: int, events: list[str], kills: int, watch: LatestWatch) -> dict:
    ckpts = run / "checkpoints"
    leftovers = sorted(p.name for p in ckpts.iterdir() if p.name.startswith((".tmp", ".old")))
    leftovers += [p.name for p in run.glob("*.tmp")]
    leftovers += [p.name for p in ckpts.glob("step-*") if not (p / "client.json").is_file()]
    a, b = final_weights(ref), final_weights(run)
    weights_equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_lines, run_lines = comparable(ref), comparable(run)
    differing = [i for i, (x, y) in enumerate(zip(ref_lines, run_lines)) if x != y]
    lines_equal = len(ref_lines) == len(run_lines) and not differing
    resumes = sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if '"type": "resume"' in line)
    ok = rc == 0 and len(events) == kills and weights_equal and lines_equal and not watch.bad and not leftovers
    return {
        "ok": ok,
        "kills": events,
        "kills_asked": kills,
        "rc": rc,
        "resumes_logged": resumes,
        "weights_bit_equal": weights_equal,
        "metrics_lines": [len(ref_lines), len(run_lines)],
        "metrics_lines_differing": differing,
        "latest_checks": watch.checks,
        "latest_incomplete": watch.bad,
        "half_written": leftovers,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="msa_dist.bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config", required=True, help="the config to train (2 ranks, DDP); set checkpoint.every_steps small"
    )
    p.add_argument("--workdir", required=True, help="where the reference and soak run dirs and logs go")
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs of a random rank (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill schedule (default %(default)s)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. checkpoint.every_steps=3")
    args = p.parse_args(argv)
    result = soak(args.config, Path(args.workdir), args.kills, args.seed, args.overrides)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
