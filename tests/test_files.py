"""Run files are replaced whole: a failure while writing leaves the old file and no temp file."""
import os

import pytest

from imgclass.files import write_text_atomic


def test_write_is_all_or_nothing(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    write_text_atomic(target, "old: 1\n")
    assert target.read_text() == "old: 1\n"

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_text_atomic(target, "new: 2\n")
    assert target.read_text() == "old: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]   # the temp file is gone too
