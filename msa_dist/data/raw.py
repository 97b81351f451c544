"""Reading the course layout: `train.txt` / `test_without_label.txt` / `data/<guid>.{jpg,txt}`.

Every listed pair becomes either a `Sample` (checked: text decoded, image decodes) or a
`BadRecord` saying why it cannot be used; nothing is dropped without a record.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from msa_dist.common.errors import MsaDistError
from msa_dist.common.labels import LABEL_TO_INDEX, LABELS
from msa_dist.common.limits import MAX_IMAGE_BYTES, MAX_LABELS_BYTES, MAX_TEXT_BYTES, check_pixels, read_input

TRAIN_FILE = "train.txt"
TEST_FILE = "test_without_label.txt"
DATA_DIR = "data"
NULL_TAG = "null"
# Destination of train.txt records before the stratified train/val split assigns them.
TRAINVAL = "train/val"


@dataclass(frozen=True)
class Record:
    """One line of a labels file: a guid, its label index (None = unlabelled) and where it goes."""

    guid: str
    label: int | None
    split: str
    source: str
    line: int


@dataclass(frozen=True)
class BadRecord:
    """A listed pair that cannot be used, with a short `reason` (for counting) and a `detail`."""

    guid: str
    split: str
    source: str
    line: int
    reason: str
    detail: str

    def message(self) -> str:
        return f"guid {self.guid}: {self.reason} ({self.detail})"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    """A checked pair: decoded text and the path of an image known to decode."""

    record: Record
    text: str
    encoding: str
    image_path: Path


Entry = Record | BadRecord


def decode_text(raw: bytes) -> tuple[str, str]:
    """Decode a tweet: UTF-8 (BOM stripped) when valid, else strict GB18030; ValueError if neither."""
    for encoding, codec in (("utf-8", "utf-8-sig"), ("gb18030", "gb18030")):
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        # GB18030 has its own 4-byte BOM that decodes to U+FEFF.
        return text.lstrip("\ufeff").strip(), encoding
    raise ValueError("text is neither UTF-8 nor GB18030")


def _read_lines(path: Path) -> list[str]:
    """The lines of a labels file; MsaDistError if it is missing, unreadable or lacks the header."""
    if not path.exists():
        raise MsaDistError(f"labels file not found: {path}")
    try:
        text = read_input(path, MAX_LABELS_BYTES).decode("utf-8-sig")
    except OSError as exc:
        raise MsaDistError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MsaDistError(f"labels file {path} is not UTF-8 text (expected lines 'guid,tag')") from None
    lines = text.splitlines()
    if not lines:
        raise MsaDistError(f"labels file {path} is empty (expected the header 'guid,tag')")
    if lines[0].replace(" ", "").strip().lower() != "guid,tag":
        raise MsaDistError(f"labels file {path} must start with the header 'guid,tag'; first line is {lines[0][:60]!r}")
    return lines


def read_labels_file(path: Path, split: str, tags: str, seen: dict[str, tuple[str, int]]) -> list[Entry]:
    """Parse a `guid,tag` file into records for `split`.

    `tags` is "label" (a label is required), "null" (only `null`) or "any" (either);
    `seen` maps guid -> (file, line) across files so duplicates are caught between them too.
    """
    entries: list[Entry] = []
    source = path.name
    for line_no, line in enumerate(_read_lines(path)[1:], start=2):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        guid = fields[0] if fields else ""

        def bad(reason: str, detail: str, guid: str = guid, line_no: int = line_no) -> BadRecord:
            return BadRecord(guid, split, source, line_no, reason, detail)

        if len(fields) != 2 or not guid:
            entries.append(bad("malformed line", f"{source} line {line_no}: {line.strip()[:60]!r}"))
            continue
        tag = fields[1].lower()
        if "." in guid:
            entries.append(bad("guid contains '.'", f"{source} line {line_no}"))
        elif "/" in guid or "\\" in guid:
            entries.append(bad("guid contains a path separator", f"{source} line {line_no}"))
        elif guid in seen:
            where = seen[guid]
            entries.append(bad("duplicate guid", f"{source} line {line_no}; also {where[0]} line {where[1]}"))
        elif not _tag_allowed(tag, tags):
            expected = {"label": "/".join(LABELS), "null": NULL_TAG, "any": "/".join(LABELS) + "/null"}[tags]
            entries.append(bad("unknown tag", f"{fields[1]!r} in {source} line {line_no}, expected {expected}"))
        else:
            seen[guid] = (source, line_no)
            label = None if tag == NULL_TAG else LABEL_TO_INDEX[tag]
            entries.append(Record(guid, label, split, source, line_no))
    return entries


def _tag_allowed(tag: str, tags: str) -> bool:
    if tag == NULL_TAG:
        return tags in ("null", "any")
    return tag in LABEL_TO_INDEX and tags in ("label", "any")


def list_records(
    data_root: str | Path, labels_file: str | Path | None = None, split_name: str | None = None
) -> list[Entry]:
    """All listed pairs of a course-layout DATA_ROOT, in file order (train.txt, then the test file).

    With `labels_file`, only that file's records, all destined for `split_name`.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise MsaDistError(f"DATA_ROOT {root} is not a directory (expected train.txt and data/ inside)")
    if not (root / DATA_DIR).is_dir():
        raise MsaDistError(f"DATA_ROOT {root} has no {DATA_DIR}/ folder with the <guid>.jpg/.txt pairs")
    seen: dict[str, tuple[str, int]] = {}
    if labels_file is not None:
        return read_labels_file(Path(labels_file), split_name, "any", seen)
    if not (root / TRAIN_FILE).is_file():
        raise MsaDistError(f"DATA_ROOT {root} has no {TRAIN_FILE} (the labelled 'guid,tag' list)")
    entries = read_labels_file(root / TRAIN_FILE, TRAINVAL, "label", seen)
    if (root / TEST_FILE).is_file():
        entries += read_labels_file(root / TEST_FILE, "test", "null", seen)
    return entries


def image_error(data: bytes) -> str | None:
    """None when the bytes decode as an image, else the decoder's one-line complaint."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                check_pixels(*image.size)  # from the header: nothing decoded yet
                # A reduced-size JPEG decode still reads every entropy-coded block (so truncation
                # and corrupt data are caught) at a fraction of the cost of a full decode.
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except UnidentifiedImageError:
        return "not a recognised image format"
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad data
        return (str(exc).splitlines() or [type(exc).__name__])[0][:120]
    return None


def check_record(record: Record, data_dir: Path) -> Sample | BadRecord:
    """Read and check one pair's files: the text decodes and is non-empty, the image decodes."""

    def bad(reason: str, detail: str) -> BadRecord:
        return BadRecord(record.guid, record.split, record.source, record.line, reason, detail)

    text_path = data_dir / f"{record.guid}.txt"
    image_path = data_dir / f"{record.guid}.jpg"
    rel_text, rel_image = f"{DATA_DIR}/{text_path.name}", f"{DATA_DIR}/{image_path.name}"
    try:
        raw_text = read_input(text_path, MAX_TEXT_BYTES)
    except FileNotFoundError:
        return bad("text file missing", rel_text)
    except OSError as exc:
        return bad("text file unreadable", f"{rel_text}: {exc.strerror or exc}")
    try:
        image_bytes = read_input(image_path, MAX_IMAGE_BYTES)
    except FileNotFoundError:
        return bad("image file missing", rel_image)
    except OSError as exc:
        return bad("image file unreadable", f"{rel_image}: {exc.strerror or exc}")
    try:
        text, encoding = decode_text(raw_text)
    except ValueError:
        return bad("text is neither UTF-8 nor GB18030", rel_text)
    if not text:
        return bad("text is empty", rel_text)
    problem = image_error(image_bytes)
    if problem is not None:
        return bad("image does not decode", f"{rel_image}: {problem}")
    return Sample(record, text, encoding, image_path)


def reencode_image(data: bytes, image_size: int, quality: int = 90) -> bytes:
    """RGB JPEG (4:2:0) with the shorter side resized to `image_size` (never upscaled)."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        check_pixels(width, height)
        if min(width, height) > image_size:
            if width <= height:
                size = (image_size, max(1, round(height * image_size / width)))
            else:
                size = (max(1, round(width * image_size / height)), image_size)
            # Let libjpeg decode at a reduced scale (still >= `size`) before the exact resize.
            image.draft("RGB", size)
            out = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        else:
            out = image.convert("RGB")
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=quality, subsampling="4:2:0")
    return buf.getvalue()
