"""issue 40, item 10: CSV cells people open in a spreadsheet never run as formulas, and imgclass reads back exactly
what it wrote."""
import csv
import io

import pytest

from imgclass.core.spreadsheet import read_cell, safe_cell

FORMULAS = ['=HYPERLINK("http://evil.example","click").jpg', "+1+cmd|' /C calc'!A0", "@SUM(A1:A9)", "-2+3",
            "\t=1", "\r=1", "'=already marked"]


@pytest.mark.parametrize("text", FORMULAS)
def test_text_a_spreadsheet_would_run_is_marked_and_read_back_exactly(text):
    cell = safe_cell(text)
    assert cell.startswith("'") and cell != text
    assert read_cell(cell) == text


@pytest.mark.parametrize("value", ["cat.jpg", "-1", "-0.5", "12", "'quoted name", "a=b", 3, -1.5, None])
def test_plain_names_and_numbers_stay_as_they_are(value):
    assert safe_cell(value) == value
    if isinstance(value, str):
        assert read_cell(value) == value


def test_a_written_row_opens_as_text():
    buf = io.StringIO()
    csv.writer(buf).writerow([safe_cell(c) for c in ["=1+1", "-1", "x"]])
    assert next(csv.reader([buf.getvalue()])) == ["'=1+1", "-1", "x"]
