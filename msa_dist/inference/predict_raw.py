"""`msa-dist predict` on raw pairs, no shards: a CSV of (id, image, text), one pair, or a course folder.

Every pair is checked first (the image file exists and decodes, the text decodes and is not
empty); bad rows are reported in one line each and skipped, with a count. The rest is predicted
in batches by a `Predictor`, whose preprocessing is the shard loader's eval path.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from msa_dist.common.errors import MsaDistError
from msa_dist.common.limits import CSV_CELL_LIMIT, MAX_CSV_BYTES, MAX_IMAGE_BYTES, read_input, text_char_limit
from msa_dist.data.raw import DATA_DIR, TEST_FILE, BadRecord, check_record, decode_text, image_error, read_labels_file
from msa_dist.inference.evaluate import calibrate, predict, run_shards, write_predictions

ID_COLUMNS, IMAGE_COLUMNS, TEXT_COLUMNS = ("id", "guid"), ("image", "image_path", "path"), ("text",)


@dataclass(frozen=True)
class Pair:
    """One checked input: its id, the image file's bytes and the decoded text."""

    key: str
    image: bytes
    text: str


@dataclass(frozen=True)
class BadRow:
    """An input that cannot be predicted: where it is and why."""

    key: str
    where: str
    reason: str

    def message(self) -> str:
        return f"{self.where} (id {self.key}): {self.reason}"


def _check(key: str, where: str, image_path: Path, text: str) -> Pair | BadRow:
    try:
        image = read_input(image_path, MAX_IMAGE_BYTES)  # a regular file of bounded size: a FIFO cannot hang us
    except FileNotFoundError:
        return BadRow(key, where, f"image file missing: {image_path}")
    except OSError as exc:
        return BadRow(key, where, f"image file unreadable: {image_path}: {exc.strerror or exc}")
    problem = image_error(image)
    if problem is not None:
        return BadRow(key, where, f"image does not decode: {image_path}: {problem}")
    if not text.strip():
        return BadRow(key, where, "text is empty")
    return Pair(key, image, text.strip())


def _column(header: list[str], names: tuple[str, ...], path: Path) -> int:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    raise MsaDistError(
        f"{path}: the header {','.join(header)!r} has no {names[0]!r} column (expected columns id,image,text)"
    )


def pairs_from_csv(path: str | Path) -> tuple[list[Pair], list[BadRow]]:
    """Rows of a CSV with header id,image,text; image paths relative to the CSV's folder."""
    path = Path(path)
    try:
        raw = read_input(path, MAX_CSV_BYTES)
    except OSError as exc:
        raise MsaDistError(f"cannot read --inputs {path}: {exc.strerror or exc}") from None
    try:
        content, _ = decode_text(raw)
    except ValueError:
        raise MsaDistError(f"--inputs {path} is neither UTF-8 nor GB18030 text") from None
    rows = _csv_rows(content, path)
    if not rows:
        raise MsaDistError(f"--inputs {path} is empty (expected the header id,image,text)")
    cols = [_column(rows[0], names, path) for names in (ID_COLUMNS, IMAGE_COLUMNS, TEXT_COLUMNS)]
    pairs, bad = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path.name} line {line}"
        if len(row) <= max(cols):
            bad.append(BadRow(row[0] if row else "?", where, f"{len(row)} fields, expected {len(rows[0])}"))
            continue
        key, image, text = row[cols[0]].strip(), row[cols[1]].strip(), row[cols[2]]
        item = _check(key, where, path.parent / image, text)
        (pairs if isinstance(item, Pair) else bad).append(item)
    return pairs, bad


def _csv_rows(content: str, path: Path) -> list[list[str]]:
    """The CSV's rows, a cell being at most CSV_CELL_LIMIT characters (the longest allowed text);
    MsaDistError naming the line otherwise."""
    reader = csv.reader(io.StringIO(content))
    previous = csv.field_size_limit(CSV_CELL_LIMIT)  # the csv module's limit is process-wide: restored below
    try:
        return list(reader)
    except csv.Error as exc:
        raise MsaDistError(
            f"--inputs {path} line {reader.line_num}: {exc} (a cell holds at most {CSV_CELL_LIMIT} characters)"
        ) from None
    finally:
        csv.field_size_limit(previous)


def pair_from_args(image: str, text: str) -> tuple[list[Pair], list[BadRow]]:
    """`--image a.jpg --text "..."`: one pair, its id the image's file name without extension."""
    item = _check(Path(image).stem, "--image/--text", Path(image), text)
    return ([item], []) if isinstance(item, Pair) else ([], [item])


def pairs_from_data_root(root: str | Path) -> tuple[list[Pair], list[BadRow]]:
    """The unlabelled pairs of a course-layout folder (test_without_label.txt, data/<guid>.jpg|.txt)."""
    root = Path(root)
    pairs, bad = [], []
    for entry in read_labels_file(root / TEST_FILE, "test", "any", {}):
        checked = entry if isinstance(entry, BadRecord) else check_record(entry, root / DATA_DIR)
        if isinstance(checked, BadRecord):
            bad.append(BadRow(checked.guid, f"{TEST_FILE} line {checked.line}", f"{checked.reason} ({checked.detail})"))
        else:
            pairs.append(Pair(checked.record.guid, read_input(checked.image_path, MAX_IMAGE_BYTES), checked.text))
    return pairs, bad


def predict_pairs(predictor, pairs: Sequence[Pair], batch_size: int = 64) -> list[tuple[str, list[float]]]:
    """(id, probabilities) for every pair, in input order, `batch_size` pairs per forward."""
    out = []
    max_length = getattr(getattr(predictor, "preprocessing", None), "max_length", None)
    chars = text_char_limit(max_length) if max_length else None  # as the loader cuts them (common/limits.py)
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        probs = predictor.predict_proba([p.image for p in chunk], [p.text[:chars] for p in chunk])
        out.extend(zip([p.key for p in chunk], probs.tolist()))
    return out


def predict_raw(
    run_dir: str,
    out: str,
    inputs: str | None = None,
    image: str | None = None,
    text: str | None = None,
    data_root: str | None = None,
    fmt: str = "probs",
    which: str = "best",
    adjust: bool = False,
    shard_dir: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    onnx: bool = False,
) -> tuple[int, list[BadRow]]:
    """Predict raw pairs with a run's model (an exported folder's model.onnx on ONNX Runtime with `onnx`);
    returns (pairs written, bad rows skipped)."""
    if sum(x is not None for x in (inputs, image, data_root)) != 1 or (image is None) != (text is None):
        raise MsaDistError("give one input: --inputs CSV, --image FILE with --text TEXT, or --data DATA_ROOT")
    if inputs is not None:
        pairs, bad = pairs_from_csv(inputs)
    elif image is not None:
        pairs, bad = pair_from_args(image, text)
    else:
        pairs, bad = pairs_from_data_root(data_root)
    from msa_dist.engine.runtime import read_env
    from msa_dist.inference.predictor import load_model

    if onnx:
        from msa_dist.inference.onnx_model import load_onnx_model

        predictor = load_onnx_model(run_dir, adjust)
        rows = predict_pairs(predictor, pairs, batch_size)
        write_predictions(out, rows, predictor.labels, fmt)
        return len(rows), bad
    if adjust and not (Path(run_dir) / "model.safetensors").is_file():
        from msa_dist.inference.calibration import load_offsets

        if load_offsets(run_dir) is None:  # tune them on the run's val split first, as `predict --adjust` does
            calibrate(run_dir, shard_dir, "val", which, batch_size)
    predictor = load_model(run_dir, device=str(read_env(device).device), checkpoint=which, adjust=adjust)
    rows = predict_pairs(predictor, pairs, batch_size)
    write_predictions(out, rows, predictor.labels, fmt)
    return len(rows), bad


def run_predict_command(args) -> int:
    """`msa-dist predict`: a shard split (the default), or raw pairs when --inputs/--image/--data is given."""
    import sys

    from msa_dist.common.display import console

    exported = (Path(args.run) / "model.safetensors").is_file()
    if all(x is None for x in (args.inputs, args.image, args.text, args.data)):
        if exported or args.onnx:
            raise MsaDistError(
                f"{args.run} is an exported model: it predicts raw pairs "
                "(--inputs CSV, --image FILE --text TEXT, or --data DATA_ROOT), not shards"
            )
        n = predict(
            args.run,
            run_shards(args.run, args.shards),
            args.out,
            args.split,
            args.checkpoint,
            batch_size=args.batch_size,
            adjust=args.adjust,
            fmt=args.format or "course",
        )
        console.print(f"wrote {n} predictions to {args.out}")
        return 0
    shard_dir = None if exported or not args.adjust else run_shards(args.run, args.shards)
    n, bad = predict_raw(
        args.run,
        args.out,
        args.inputs,
        args.image,
        args.text,
        args.data,
        fmt=args.format or "probs",
        which=args.checkpoint,
        adjust=args.adjust,
        shard_dir=shard_dir,
        batch_size=args.batch_size,
        onnx=args.onnx,
    )
    for row in bad[:20]:
        print(f"msa-dist: skipped {row.message()}", file=sys.stderr)
    if len(bad) > 20:
        print(f"msa-dist: ... and {len(bad) - 20} more bad rows", file=sys.stderr)
    console.print(f"wrote {n} predictions to {args.out}" + (f"; skipped {len(bad)} bad rows" if bad else ""))
    return 0 if n else 1
