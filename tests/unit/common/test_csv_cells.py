"""Issue 23, item 11: formula cells in prediction CSVs are escaped (common/csv_cells.py)."""

from __future__ import annotations


def test_prediction_csvs_escape_formula_cells(tmp_path):
    from msa_dist.common.csv_cells import escape_row
    from msa_dist.inference.evaluate import write_predictions

    rows = [
        ('=HYPERLINK("http://x")', [0.1, 0.2, 0.7]),
        ("+1", [0.5, 0.3, 0.2]),
        ("@a", [0.2, 0.5, 0.3]),
        ("-2", [0.3, 0.3, 0.4]),
        ("\tx", [0.3, 0.3, 0.4]),
        ("123", [0.9, 0.05, 0.05]),
    ]
    for fmt in ("probs", "course"):
        write_predictions(tmp_path / "p.csv", rows, ["positive", "neutral", "negative"], fmt)
        ids = [line.split(",")[0] for line in (tmp_path / "p.csv").read_text().splitlines()[1:]]
        assert ids == ['"\'=HYPERLINK(""http://x"")"', "'+1", "'@a", "'-2", "'\tx", "123"]
    assert escape_row(["=1", 2, "ok", "\r"]) == ["'=1", 2, "ok", "'\r"]
