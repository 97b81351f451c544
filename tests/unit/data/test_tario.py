"""The lean tar reader (data/format/tario.py): the samples webdataset reads, long names, corrupt shards."""

from __future__ import annotations

import tarfile

import pytest
import webdataset as wds

from msa_dist.data.format.manifest import shard_urls
from msa_dist.data.format.tario import tar_samples


def test_lean_tar_reader_matches_webdataset(shard_dir):
    urls = shard_urls(shard_dir, "train") + shard_urls(shard_dir, "val")
    expected = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
    got = list(tar_samples(handler=lambda exc: False)([{"url": u} for u in urls]))
    assert got == expected and len(got) == 18


def test_lean_tar_reader_long_names_and_corrupt_shards(tmp_path):
    key = "k" * 120  # longer than ustar's 100-byte name field: a pax header carries it
    good = tmp_path / "good.tar"
    with wds.TarWriter(str(good), encoder=False) as writer:
        writer.write({"__key__": key, "txt": b"hello", "cls": b"1"})
        writer.write({"__key__": "short", "txt": b"x"})
    got = list(tar_samples(handler=lambda exc: False)([{"url": str(good)}]))
    assert [(s["__key__"], s["txt"]) for s in got] == [(key, b"hello"), ("short", b"x")]

    bad = tmp_path / "bad.tar"
    raw = bytearray(good.read_bytes())
    raw[148:156] = b"0000000\0"  # wrong checksum in the first header
    bad.write_bytes(bytes(raw))
    errors = []
    samples = list(tar_samples(handler=lambda exc: errors.append(exc) or True)([{"url": str(bad)}, {"url": str(good)}]))
    assert len(errors) == 1 and isinstance(errors[0], tarfile.ReadError)
    assert [s["__key__"] for s in samples] == [key, "short"]  # the next shard is still read
    with pytest.raises(tarfile.ReadError):
        list(tar_samples(handler=lambda exc: False)([{"url": str(bad)}]))
