"""CSV cells that a spreadsheet shows as text, never runs: a file named `=HYPERLINK("http://x","y").jpg` written raw
into label_issues.csv becomes a live formula when a person opens the file in Excel or LibreOffice (CSV injection,
OWASP). Text that a spreadsheet would read as a formula (a first character of = + @ tab or carriage return, or a -
that does not start a plain number) is written behind an apostrophe, the spreadsheets' own mark for "text"; numbers
stay numbers (-1 or -0.5 in a submission stays as it is). `read_cell` undoes it exactly, for the files imgclass
reads back (check's label_issues.csv as train's --exclude)."""
from __future__ import annotations

from typing import Any

FORMULA_START = ("=", "+", "@", "\t", "\r")


def _plain_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _needs_mark(text: str) -> bool:
    if text.startswith(FORMULA_START) or text.startswith("-") and not _plain_number(text):
        return True
    return text.startswith("'") and _needs_mark(text[1:])  # a name that itself starts with the mark: kept exact


def safe_cell(value: Any) -> Any:
    """A value for a CSV cell people open in a spreadsheet: text that would be a formula gets a leading apostrophe;
    anything else (numbers, plain names) as it is."""
    return "'" + value if isinstance(value, str) and _needs_mark(value) else value


def safe_row(values) -> list:
    return [safe_cell(v) for v in values]


def read_cell(text: str) -> str:
    """The text safe_cell was given (a cell of a file imgclass wrote, read back)."""
    return text[1:] if text.startswith("'") and _needs_mark(text[1:]) else text
