"""Issue 23, raw inputs (common/limits.py): files that are not regular files, reads over their cap, images
over the pixel limit and huge CSV cells end in one line or a reported skip. Formula cells:
test_csv_cells.py."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image
from security_utils import no_hang, small_jpeg

from msa_dist.common.errors import MsaDistError
from msa_dist.common.limits import MAX_IMAGE_PIXELS, read_input
from msa_dist.data.raw import Record, check_record, image_error


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_raw_inputs_must_be_regular_files(tmp_path, kind):
    data = tmp_path / "data"
    data.mkdir()
    (data / "g1.jpg").write_bytes(small_jpeg())
    (data / "g1.txt").write_text("hello")
    target = data / "g1.txt"
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dev-zero":
        target.symlink_to("/dev/zero")
    else:
        target.mkdir()
    with no_hang():
        result = check_record(Record("g1", 0, "train", "train.txt", 2), data)
    assert result.reason == "text file unreadable" and "not a regular file" in result.detail


def test_raw_reads_are_capped(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(b"\xff" * 5000)
    with pytest.raises(OSError, match="more than the 4096"):
        read_input(path, 4096)
    assert read_input(path, 5000) == b"\xff" * 5000


def test_predict_inputs_that_are_fifos_do_not_hang(tmp_path):
    from msa_dist.inference.predict_raw import pairs_from_csv

    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "in.csv").write_text("id,image,text\na,pipe.jpg,hello\nb,/dev/zero,hi\n")
    with no_hang():
        pairs, bad = pairs_from_csv(tmp_path / "in.csv")
    assert not pairs and [b.key for b in bad] == ["a", "b"] and all("not a regular file" in b.reason for b in bad)
    os.mkfifo(tmp_path / "in2.csv")
    with no_hang(), pytest.raises(MsaDistError, match="cannot read --inputs"):
        pairs_from_csv(tmp_path / "in2.csv")


def test_a_huge_png_is_refused_from_its_header():
    buf = io.BytesIO()
    Image.new("1", (13000, 13000)).save(buf, format="PNG")  # 169 MP, under Pillow's own bomb limit
    assert MAX_IMAGE_PIXELS < 13000 * 13000
    assert "pixels" in image_error(buf.getvalue())


def test_a_csv_cell_over_128_kb_is_read_and_one_over_the_limit_is_one_line(tmp_path):
    from msa_dist.common.limits import CSV_CELL_LIMIT
    from msa_dist.inference.predict_raw import pairs_from_csv

    (tmp_path / "a.jpg").write_bytes(small_jpeg())
    (tmp_path / "in.csv").write_text(f"id,image,text\na,a.jpg,{'w ' * 100_000}\n")  # 200 KB
    pairs, bad = pairs_from_csv(tmp_path / "in.csv")
    assert [p.key for p in pairs] == ["a"] and not bad
    (tmp_path / "in.csv").write_text(f'id,image,text\na,a.jpg,"{"w" * (CSV_CELL_LIMIT + 1)}"\n')
    with pytest.raises(MsaDistError, match="line 2: field larger than field limit"):
        pairs_from_csv(tmp_path / "in.csv")
