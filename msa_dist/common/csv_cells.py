"""CSV cells that a spreadsheet shows as text: a cell that begins with = + - @ (or a tab or a
carriage return) is read as a formula by Excel, LibreOffice and Google Sheets, so an id such as
`=HYPERLINK(...)` in a predictions file could run when the file is opened. Such a cell gets a
leading `'` (OWASP's advice), which spreadsheets show as text; every CSV msa-dist writes goes
through `escape_row`.
"""

from __future__ import annotations

from collections.abc import Iterable

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value):
    """`value`, with a `'` in front when it is a string a spreadsheet would read as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def escape_row(row: Iterable) -> list:
    """A CSV row with every string cell escaped (numbers pass unchanged)."""
    return [escape_cell(value) for value in row]
