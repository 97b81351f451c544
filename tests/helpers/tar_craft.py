"""Crafting tar bytes for the fuzz tests: member offsets, header fields with a valid checksum, pax
blocks and records (of a right or wrong length)."""

from __future__ import annotations

import io
import tarfile


def members(tar: bytes) -> list[int]:
    """Offsets of the tar's header blocks ([0] when tarfile cannot list them: an already mutated tar)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            return [info.offset for info in tf] or [0]
    except Exception:
        return [0]


def with_header_field(tar: bytearray, at: int, lo: int, hi: int, value: bytes) -> None:
    tar[at + lo : at + hi] = value.ljust(hi - lo, b"\0")[: hi - lo]
    header = tar[at : at + 512]
    header[148:156] = b" " * 8
    tar[at + 148 : at + 156] = b"%06o\0 " % sum(header)


def pax_block(records: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("pax")
        info.type, info.size = tarfile.XHDTYPE, len(records)
        tf.addfile(info, io.BytesIO(records))
    return buf.getvalue()[: 512 + len(records) + (-len(records) % 512)]


def pax_record(key: str, value: str, slack: int = 0) -> bytes:
    """A "LEN key=value\n" record; `slack` makes its length wrong."""
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n + slack).encode() + body
