import csv

import numpy as np
import pytest

import imgclass

from helpers import tiny_image


def make_test_dir(tmp_path):
    rng = np.random.RandomState(9)
    folder = tmp_path / "test"
    folder.mkdir()
    labels = {}
    for n, stem in enumerate(["10", "2", "1", "33"]):
        tiny_image(n % 3, rng).save(folder / f"{stem}.png")
        labels[stem] = n % 3
    return folder, labels


def test_submission_numeric_order_and_targets(trained_run, tmp_path):
    folder, labels = make_test_dir(tmp_path)
    out = imgclass.submit(trained_run, folder, out=tmp_path / "sub.csv")
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["ID", "TARGET"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "10", "33"]
    assert all(int(r[1]) == labels[r[0]] for r in rows[1:])     # colour classes are learnt
    out2 = imgclass.submit(trained_run, folder, out=tmp_path / "sub2.csv", id_column="id", target_column="label",
                           target="label")
    rows2 = list(csv.reader(out2.open()))
    classes = imgclass.load(trained_run).classes
    assert rows2[0] == ["id", "label"]
    assert [r[1] for r in rows2[1:]] == [classes[int(r[1])] for r in rows[1:]]


def test_unreadable_test_image_still_gets_a_row(trained_run, tmp_path, imgclass_log):
    folder, _ = make_test_dir(tmp_path)
    (folder / "5.jpg").write_text("broken")
    out = imgclass.submit(trained_run, folder, out=tmp_path / "s.csv")
    assert [r[0] for r in list(csv.reader(out.open()))[1:]] == ["1", "2", "5", "10", "33"]
    assert any(level == "WARNING" and "5.jpg" in text and "most common class" in text for level, text in imgclass_log)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("s.csv")] == ["s.csv"]   # no temp file left


def test_a_failed_submission_keeps_the_last_good_one(trained_run, tmp_path, monkeypatch):
    """submit writes a temporary file and renames it: a failure (or a kill) while writing leaves the previous
    submission whole."""
    import os
    data = tmp_path / "test"
    data.mkdir()
    for i in range(3):
        tiny_image(i, np.random.RandomState(i)).save(data / f"{i}.png")
    out = tmp_path / "submission.csv"
    out.write_text("ID,TARGET\n1,cat\n")

    def crash(src, dst):
        raise OSError("killed")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        imgclass.submit(trained_run, data, out=out)
    assert out.read_text() == "ID,TARGET\n1,cat\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv", "test"]


def test_names_never_become_spreadsheet_formulas(trained_run, tmp_path, capsys):
    """issue 40, item 10: a test image named like a formula is text in submission.csv and in predict's CSV; an ID
    that is a plain negative number stays as it is."""
    rng = np.random.RandomState(3)
    folder = tmp_path / "test"
    folder.mkdir()
    for stem in ("=HYPERLINK(1)", "-3", "@SUM(A1)"):
        tiny_image(0, rng).save(folder / f"{stem}.png")
    out = imgclass.submit(trained_run, folder, out=tmp_path / "sub.csv")
    ids = [r[0] for r in csv.reader(out.open())][1:]
    assert sorted(ids) == sorted(["'=HYPERLINK(1)", "-3", "'@SUM(A1)"])
    from imgclass.cli import main
    assert main(["predict", str(trained_run), str(folder), "--format", "csv", "--runtime", "torch"]) == 0
    images = [r[0] for r in csv.reader(capsys.readouterr().out.splitlines())][1:]
    assert all(not name.startswith(("=", "@")) for name in images) and len(images) == 3
