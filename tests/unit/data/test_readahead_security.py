"""Issue 29, item 14 (data/loading/readahead.py): reads still in flight when a read-ahead is dropped do not
keep the interpreter from exiting. A process reads one batch from a server (on 127.0.0.1, run by the test)
that never answers the next batch's read, and ends: it must exit at once, not after its reads time out."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import webdataset as wds
from misbehaving_http import Answer, MisbehavingServer, honest

from msa_dist.data.format.index import index_name, scan_tar
from msa_dist.data.format.manifest import write_manifest

REPO = Path(__file__).resolve().parents[3]

READ_ONE_BATCH_AND_EXIT = textwrap.dedent("""
    import sys
    import numpy as np
    from msa_dist.data.loading.reader import SampleReader, ShardSet
    reader = SampleReader(ShardSet(sys.argv[1]), "train")
    items = [(0, t, np.arange(2 * t, 2 * t + 2)) for t in range(4)]
    batches = reader.read_ahead(iter(items), threads=4, batches_ahead=1, gap_bytes=0)
    item, samples = next(batches)  # batch 1's read is in flight now, and its server never answers
    print("read", [s["__key__"] for s in samples], flush=True)
""")


def _shard_set(root: Path) -> Path:
    root.mkdir()
    tar = root / "train-000000.tar"
    with wds.TarWriter(str(tar), mtime=0) as sink:
        for i in range(8):
            sink.write({"__key__": f"k{i}", "txt": b"some text", "cls": b"0"})
    data = tar.read_bytes()
    (root / index_name(tar.name)).write_bytes(scan_tar(data, tar.name).to_json())
    shard = {"name": tar.name, "samples": 8, "bytes": len(data), "sha256": ""}
    split = {"samples": 8, "labelled": 0, "guids": [], "shards": [shard]}
    write_manifest(root, {"format": 1, "labels": [], "options": {}, "splits": {"train": split}})
    return root


class FirstTarReadOnly:
    """The folder's files as an honest server gives them, but every ranged read of the tar that does not
    start at its first byte (batch 0's samples) stalls, in whatever order the reader's threads ask."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, path: str, headers: dict) -> Answer:
        file = self.root / path.split("?")[0].lstrip("/")
        if not file.is_file():
            return Answer(404, b"", {"Content-Length": 0})
        answer = honest(file.read_bytes())(path, headers)
        if file.suffix == ".tar":
            answer.stall = not str(headers.get("Range", "")).startswith("bytes=0-")
        return answer


def test_a_process_exits_with_reads_still_in_flight(tmp_path):
    root = _shard_set(tmp_path / "shards")
    with MisbehavingServer(FirstTarReadOnly(root)) as server:
        process = subprocess.Popen(
            [sys.executable, "-c", READ_ONE_BATCH_AND_EXIT, server.url],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # the bound of a hang: the old pool's threads were joined at exit, and the stalled read held
            # its thread for the socket timeout (60 s), then the next queued read took it
            out, err = process.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise AssertionError("the process had read its batch and still not exited after 45 s") from None
    assert process.returncode == 0, err[-2000:]
    assert out.strip() == "read ['k0', 'k1']"


def test_shutdown_cancels_what_has_not_begun():
    from msa_dist.data.loading.readahead import ReadPool

    release, started = threading.Event(), threading.Event()

    def blocked() -> str:
        started.set()
        release.wait(timeout=30)
        return "done"

    pool = ReadPool(1, "test-read")
    first, second = pool.submit(blocked), pool.submit(str, 2)
    assert started.wait(timeout=30)
    pool.shutdown()
    release.set()
    assert first.result(timeout=30) == "done" and second.cancelled()
    assert all(thread.daemon for thread in pool._started)
