"""benchmarks/device_carry.py: files larger than one device call travel in checked pieces."""

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import device_carry  # noqa: E402


@pytest.fixture
def source(tmp_path):
    pkg = tmp_path / "src" / "pkg"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "weights.bin").write_bytes(bytes(range(256)) * 9000)  # 2.2 MiB
    (pkg / "config.json").write_text('{"hidden": 384}')
    (pkg / "__pycache__" / "x.pyc").write_bytes(b"compiled")
    (tmp_path / "single.txt").write_text("one file")
    return [("site/pkg", pkg), ("single.txt", tmp_path / "single.txt")]


def carry(tmp_path, source, name="carry"):
    return device_carry.pack(tmp_path / name, 1.0, source)


def test_pack_is_deterministic_and_cut_to_size(tmp_path, source):
    first, second = carry(tmp_path, source), carry(tmp_path, source, "again")
    assert first == second
    assert [p["name"] for p in first["pieces"]] == ["piece-00", "piece-01", "piece-02"]
    assert all(p["bytes"] == 2**20 for p in first["pieces"][:-1])
    joined = b"".join((tmp_path / "carry" / p["name"]).read_bytes() for p in first["pieces"])
    assert hashlib.sha256(joined).hexdigest() == first["sha256"]


def test_pieces_gather_over_calls_and_unpack_whole(tmp_path, source):
    manifest = carry(tmp_path, source)
    staged, out = tmp_path / "staged", tmp_path / "out"
    for i, piece in enumerate(manifest["pieces"]):
        call = tmp_path / f"call{i}"  # what one device call carried: the manifest and one piece
        call.mkdir()
        (call / "MANIFEST.json").write_bytes((tmp_path / "carry" / "MANIFEST.json").read_bytes())
        (call / piece["name"]).write_bytes((tmp_path / "carry" / piece["name"]).read_bytes())
        missing = device_carry.stage(call, staged)
        assert missing == [p["name"] for p in manifest["pieces"][i + 1 :]]
        if missing:
            with pytest.raises(device_carry.CarryError, match="piece-0.*missing"):
                device_carry.unpack(staged, out)
    device_carry.unpack(staged, out)
    assert (out / "site/pkg/weights.bin").read_bytes() == (source[0][1] / "weights.bin").read_bytes()
    assert (out / "single.txt").read_text() == "one file"
    assert not (out / "site/pkg/__pycache__").exists()


def test_a_piece_damaged_in_transit_is_one_line(tmp_path, source):
    manifest = carry(tmp_path, source)
    damaged = tmp_path / "carry" / manifest["pieces"][1]["name"]
    data = damaged.read_bytes()
    damaged.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/device_carry.py"),
            "stage",
            str(tmp_path / "carry"),
            "--to",
            str(tmp_path / "staged"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == device_carry.MISSING
    assert proc.stderr.count("\n") == 1 and "piece-01: damaged in transit" in proc.stderr


def test_a_member_outside_the_destination_is_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "piece-00").write_bytes(buf.getvalue())
    (staged / "MANIFEST.json").write_text(
        json.dumps(
            {
                "pieces": [
                    {
                        "name": "piece-00",
                        "bytes": len(buf.getvalue()),
                        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
                    }
                ],
                "bytes": len(buf.getvalue()),
                "sha256": "",
                "contents": ["x"],
            }
        )
    )
    with pytest.raises(device_carry.CarryError, match="cannot be extracted"):
        device_carry.unpack(staged, tmp_path / "out" / "dest")
    assert not (tmp_path / "out" / "escaped.txt").exists()
