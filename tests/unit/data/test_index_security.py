"""Issue 29, the shard indexes (data/format/index.py, index_bin.py): no sample may span more than
MAX_SAMPLE_BYTES, checked when any store's index is parsed (item 5: HTTP and S3 cannot check an index
against the shard's size); a binary index truncated while loaded is no SIGBUS and no zeros (item 17)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from msa_dist.common import limits
from msa_dist.common.errors import MsaDistError
from msa_dist.data.format.index import ShardIndex, scan_tar
from msa_dist.data.format.index_bin import CompactIndex, binary_name, load_index, to_binary
from msa_dist.data.stores import open_store
from msa_dist.data.stores.serve import serving

REPO = Path(__file__).resolve().parents[3]
SHARD_BYTES = 96 << 20


def _index(span: int, samples: int = 4) -> ShardIndex:
    """`samples` samples of `span` bytes each, back to back, a `jpg` member filling each."""
    starts = [i * span for i in range(samples)]
    return ShardIndex(
        "train-000000.tar",
        samples * span,
        [f"k{i}" for i in range(samples)],
        starts,
        [s + span for s in starts],
        {"jpg": [[s + 512, span - 512] for s in starts]},
    )


def test_a_sample_may_not_span_more_than_the_cap():
    whole_shard = _index(SHARD_BYTES, samples=1)  # the review's index: each sample a whole 96 MiB shard
    with pytest.raises(MsaDistError, match="spans 100663296 bytes, more than the 36700160 a sample may"):
        ShardIndex.from_json(whole_shard.to_json(), "x.idx.json")
    with pytest.raises(MsaDistError, match="more than the 36700160 bytes a sample may"):
        CompactIndex.parse(to_binary(whole_shard), "x.idx.bin")
    cap = limits.MAX_SAMPLE_BYTES  # 35 MiB: the image and text caps, 2 MiB of headers
    largest = _index(cap, samples=2)  # the cap itself is allowed: an image at its own cap fits
    assert cap == limits.MAX_IMAGE_BYTES + limits.MAX_TEXT_BYTES + (2 << 20) == 36700160
    assert ShardIndex.from_json(largest.to_json(), "x").ends == largest.ends
    assert list(CompactIndex.parse(to_binary(largest), "x").ends) == largest.ends


def test_the_cap_holds_for_an_index_read_over_http(tmp_path):
    """No shard size to compare with over HTTP: the old loader took 4 samples of 96 MiB each."""
    (tmp_path / binary_name("train-000000.tar")).write_bytes(to_binary(_index(SHARD_BYTES // 4 * 3)))
    with serving(tmp_path) as base, pytest.raises(MsaDistError, match="a sample spans more than"):
        load_index(open_store(base), "train-000000.tar")


def test_shards_index_refuses_a_sample_over_the_cap(monkeypatch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, size in (("k0.jpg", 3000), ("k0.txt", 10), ("k1.jpg", 100)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    monkeypatch.setattr("msa_dist.data.format.index.MAX_SAMPLE_BYTES", 2048)
    with pytest.raises(MsaDistError, match="shard s.tar cannot be indexed: sample 0 spans 4608 bytes"):
        scan_tar(buf.getvalue(), "s.tar")


TRUNCATE_WHILE_LOADED = textwrap.dedent("""
    import os, sys
    from msa_dist.data.format.index import ShardIndex
    from msa_dist.data.format.index_bin import load_index, to_binary
    from msa_dist.data.stores import LocalStore
    folder, keep = sys.argv[1], int(sys.argv[2])
    n = 5000  # 155 KB of records: dozens of pages
    starts = [i * 1024 for i in range(n)]
    index = ShardIndex("s.tar", n * 1024, [f"k{i:06d}" for i in range(n)], starts, [s + 1024 for s in starts],
                       {"txt": [[s + 512, 10] for s in starts]})
    path = os.path.join(folder, "s.tar.idx.bin")
    with open(path, "wb") as f:
        f.write(to_binary(index))
    loaded = load_index(LocalStore(folder), "s.tar")
    os.truncate(path, keep if keep > 0 else os.path.getsize(path) + keep)  # rewritten by someone else
    print(loaded.keys[n - 1], loaded.ends[n - 1], list(loaded.members(n - 1)))
""")


@pytest.mark.parametrize("keep", [64, -8])  # to its header (pages gone), or its last bytes (within a page)
def test_a_binary_index_truncated_while_loaded_keeps_its_records(tmp_path, keep):
    """The old index was memory-mapped: its process died of SIGBUS, or read zeros in the last page."""
    done = subprocess.run(
        [sys.executable, "-c", TRUNCATE_WHILE_LOADED, str(tmp_path), str(keep)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["k004999", "5120000", "[('txt',", "5119488,", "10)]"]


def test_a_binary_index_cut_short_before_it_is_read_is_one_line(tmp_path):
    path = tmp_path / binary_name("s.tar")
    path.write_bytes(to_binary(_index(1024, samples=50))[:-7])
    with pytest.raises(MsaDistError, match="not a valid shard index"):
        load_index(open_store(str(tmp_path)), "s.tar")
