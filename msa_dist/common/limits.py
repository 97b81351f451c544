"""Bounds on untrusted inputs: raw files must be regular files of a bounded size, images have a
bounded pixel count, texts are cut to what the tokenizer can use before it sees them.

Why each value: tweets are under 1 KB of text and images of a few MB; the bounds leave room for
far larger inputs while keeping one sample's cost (memory, decode time) small. docs/security.md
lists them.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_IMAGE_BYTES = 32 << 20  # an image file (raw input or shard member): 32 MiB
MAX_TEXT_BYTES = 1 << 20  # a raw text file: 1 MiB (a tweet is under 1 KB)
MAX_CSV_BYTES = 256 << 20  # a `predict --inputs` CSV: 256 MiB
MAX_LABELS_BYTES = 256 << 20  # a `guid,tag` labels file: 256 MiB
# 50 megapixels: a 48 MP phone photo passes; a 13000 x 13000 PNG (169 MP, under Pillow's own
# bomb limit of 179 MP) is refused before it is decoded (3 bytes a pixel: 150 MB at most).
MAX_IMAGE_PIXELS = 50_000_000
# Characters kept per token of data.max_length before tokenizing: a WordPiece token covers one
# word piece (at most 100 characters make one [UNK]); 64 a token is far beyond real text, so
# cutting there changes no tokenization of max_length tokens, and a 50 MB text costs nothing.
TEXT_CHARS_PER_TOKEN = 64
CSV_CELL_LIMIT = MAX_TEXT_BYTES  # the longest allowed text fits in one CSV cell
# One sample's bytes in a shard (an index's end - start): the largest image and text allowed plus
# 2 MiB for the tar headers (a long name or pax header may take 1 MiB), a label and small members.
# A crafted index cannot make one sample (or, times data.read_threads, the read-ahead) cost more.
MAX_SAMPLE_BYTES = MAX_IMAGE_BYTES + MAX_TEXT_BYTES + (2 << 20)
# Whole files read from a store at once: a manifest of 10^6 shards is 140 MiB of JSON (data-scale.md);
# a shard's index, ~100 B a sample as JSON, 56 as binary records; a tar is read whole only by
# `shards index` and `shards verify` (and a binary index addresses 4 GiB at most).
MAX_MANIFEST_BYTES = 1 << 30
MAX_INDEX_BYTES = 256 << 20
MAX_SHARD_BYTES = 1 << 32


def is_count(value) -> bool:
    """A non-negative int from parsed JSON: not a bool, a float or a string."""
    return type(value) is int and value >= 0


def read_input(path: str | Path, limit: int) -> bytes:
    """A raw input file's bytes. OSError (FileNotFoundError when absent) if it is not a regular file
    (a FIFO would block, /dev/zero never end) or is larger than `limit` bytes; the read is capped."""
    # O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting for one
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, a device or a directory)")
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{info.st_size} bytes, more than the {limit} allowed")
        chunks, left = [], limit + 1  # the size may change while reading: never read more than that
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise OSError(errno.EFBIG, f"more than the {limit} bytes allowed")
        return b"".join(chunks)
    finally:
        os.close(fd)


def text_char_limit(max_length: int) -> int:
    """Characters of a text that can matter for `max_length` tokens."""
    return max(1, max_length) * TEXT_CHARS_PER_TOKEN


def cut_text(data: bytes, max_length: int) -> str:
    """A UTF-8 text member, cut to `text_char_limit(max_length)` characters before decoding the rest:
    only the bytes that can matter are decoded. UnicodeDecodeError if those bytes are not UTF-8."""
    chars = text_char_limit(max_length)
    if len(data) <= chars:
        return data.decode("utf-8")
    head = data[: 4 * chars]  # a character is at most 4 bytes
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3 or exc.reason != "unexpected end of data":
            raise
        text = head[: exc.start].decode("utf-8")  # the cut split the last character
    return text[:chars]


def check_pixels(width: int, height: int) -> None:
    """ValueError for an image with more than MAX_IMAGE_PIXELS pixels (or no pixels)."""
    if width <= 0 or height <= 0 or width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"image of {width} x {height} pixels: at most {MAX_IMAGE_PIXELS} pixels are read")
