"""A lean tar reader: webdataset's samples (`tar_samples`) and the member offsets of a shard's index.

Python's `tarfile` decodes every header field (~50 us per member); this reader takes only the name,
size and type, checks the header checksum, and groups members into samples as webdataset does: the
key is the path up to the first dot of the file name, the rest (lowercased) is the field name.
Handles ustar/GNU/pax headers (long names, pax `path` and `size` records); other member types
(directories, links) are skipped, as webdataset skips them. `scan_members` gives where each member
starts (its first header block) and where its data lies, for data/format/index.py.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterable, Iterator

BLOCK = 512
_META_RE = re.compile(r"__[^/]*__($|/)")  # webdataset skips these members (e.g. __index__)
_REGULAR = (b"0", b"\0", b"7")
MAX_HEADER_DATA = 1 << 20  # a GNU long name or a pax header: 1 MiB is far more than any name needs


def tar_samples(handler: Callable[[Exception], bool]):
    """A pipeline stage: {"url": local tar path} dicts in, webdataset-style sample dicts out.

    An error (unreadable file, bad header, truncated member) goes to `handler`; if it returns
    True the rest of that shard is skipped and the next one is read.
    """

    def stage(src: Iterable[dict]) -> Iterator[dict]:
        for item in src:
            url = item["url"]
            sample: dict | None = None
            try:
                with open(url, "rb", buffering=1 << 20) as stream:
                    for name, data in _members(stream):
                        key, dot, suffix = _split_name(name)
                        if not dot or _META_RE.match(name):
                            continue
                        if sample is None or sample["__key__"] != key:
                            if sample is not None:
                                yield sample
                            sample = {"__key__": key, "__url__": url}
                        if suffix in sample:
                            raise ValueError(f"{name}: duplicate file name in tar file {url}")
                        sample[suffix] = data
            except Exception as exc:
                exc.args = exc.args + (url,)
                if not handler(exc):
                    raise
            if sample is not None:
                yield sample  # also a partial one after an error: downstream counts it as corrupt

    return stage


def _split_name(name: str) -> tuple[str, str, str]:
    """("dir/key", ".", "ext.more") from "dir/key.ext.more"; no dot in the file name -> ("", "", "")."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash:  # no extension, or a file name that starts with a dot
        return "", "", ""
    return name[:dot], ".", name[dot + 1 :].lower()


def _members(stream) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file in an uncompressed tar stream."""
    for name, _, _, data in scan_members(stream, read_data=True):
        yield name, data


def scan_members(stream, read_data: bool = False) -> Iterator[tuple[str, int, int, int]]:
    """(name, start, data_offset, size) of each regular file in an uncompressed tar stream: `start`
    is the offset of its first header block (a pax or long-name header included). With
    `read_data` the 4th item is the member's bytes instead of its size."""
    long_name: str | None = None
    pax: dict[str, str] = {}
    offset = start = 0
    total = stream.seek(0, 2)  # every member must lie inside the file: no size may point past it
    stream.seek(0)
    while True:
        header = stream.read(BLOCK)
        if len(header) < BLOCK:
            if header:
                raise tarfile.ReadError("truncated tar header")
            return  # end of file without the zero blocks: accepted, as tarfile does
        if header.count(0) == BLOCK:
            return  # end-of-archive marker
        _check_sum(header)
        typeflag = header[156:157]
        size = _number(header[124:136])
        if "size" in pax:
            size = _pax_size(pax["size"])
        data_offset = offset + BLOCK
        if size > total - data_offset:
            raise tarfile.ReadError(
                f"a member at byte {offset} claims {size} bytes, past the end of the "
                f"{total}-byte file (truncated or corrupt shard?)"
            )
        if typeflag in (b"L", b"x") and size > MAX_HEADER_DATA:
            raise tarfile.ReadError(
                f"a long-name or pax header of {size} bytes at byte {offset} (at most {MAX_HEADER_DATA})"
            )
        wanted = read_data or typeflag in (b"L", b"x")
        data = stream.read(size) if wanted else b""
        if wanted and len(data) < size:
            raise tarfile.ReadError(f"truncated tar member ({len(data)} of {size} bytes)")
        if wanted:
            stream.read(-size % BLOCK)  # padding to the next block
        else:
            stream.seek(size + (-size % BLOCK), 1)
        offset = data_offset + size + (-size % BLOCK)
        if typeflag == b"L":  # GNU long name: the next member's name
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if typeflag == b"x":  # pax extended header for the next member
            pax = _pax_records(data)
            continue
        if typeflag == b"g":  # pax global header: nothing we use
            start = offset
            continue
        name = pax.get("path") or long_name or _header_name(header)
        long_name, pax = None, {}
        if typeflag in _REGULAR:
            yield name, start, data_offset, data if read_data else size
        start = offset


def _header_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 for large values; never negative."""
    if field[0] == 0xFF:  # GNU base-256, negative
        raise tarfile.ReadError(f"negative number in tar header: {field!r}")
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    if not digits.isdigit():  # int(..., 8) would also take a sign, '_' or spaces
        if digits:
            raise tarfile.ReadError(f"bad number in tar header: {field!r}")
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        raise tarfile.ReadError(f"bad number in tar header: {field!r}") from None


def _pax_size(value: str) -> int:
    """A pax `size` record: decimal digits only (no sign, no '_')."""
    if not (value.isascii() and value.isdigit()) or len(value) > 20:
        raise tarfile.ReadError(f"bad pax size {value[:40]!r}")
    return int(value)


def _check_sum(header: bytes) -> None:
    stored = _number(header[148:156])
    # the checksum field itself counts as eight spaces
    if sum(header) - sum(header[148:156]) + 256 != stored:
        raise tarfile.ReadError("bad tar header checksum (corrupt shard?)")


def _pax_records(data: bytes) -> dict[str, str]:
    """Parse "LEN key=value\\n" records."""
    records, i = {}, 0
    while i < len(data) and data[i] != 0:
        space = data.find(b" ", i, i + 21)
        digits = data[i:space] if space > i else b""
        length = int(digits) if digits.isdigit() else 0
        # a record holds at least its length, a space, "k=" and a newline: each one moves i forward
        if length < space - i + 3 or i + length > len(data):
            raise tarfile.ReadError(f"bad pax record at byte {i} of a pax header")
        key, _, value = data[space + 1 : i + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        i += length
    return records
