"""train --exclude / --relabel: the images left out are in no split and recorded; corrected labels are used; a path
that names no image is refused; --resume keeps the edited split."""
import csv

import pytest

import imgclass
from imgclass.data.edits import apply_edits, read_paths
from imgclass.data.labels import CLASSES, LabelSource
from imgclass.core.errors import UserError

from helpers import FAST, make_class_folders


def _rows(run_dir):
    with open(run_dir / "splits.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_excluded_images_are_absent_from_training_and_recorded(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=10)
    (tmp_path / "drop.txt").write_text("cat/img1.png\n\ndog/img4.png\n")
    (tmp_path / "fix.csv").write_text("path,label\nfish/img0.png,cat\n")
    run = imgclass.train(data, out=str(tmp_path / "run"), exclude=str(tmp_path / "drop.txt"),
                         relabel=str(tmp_path / "fix.csv"), **dict(FAST, evaluate=True))
    rows = _rows(run.dir)
    excluded = [(r["path"], r["label"]) for r in rows if r["split"] == "excluded"]
    assert excluded == [("cat/img1.png", "cat"), ("dog/img4.png", "dog")]
    used = {r["path"]: r["label"] for r in rows if r["split"] != "excluded"}
    assert len(used) == 28 and "cat/img1.png" not in used and used["fish/img0.png"] == "cat"
    report = (run.dir / "eval" / "test" / "report.md").read_text()
    assert "2 image(s) were left out by --exclude" in report
    # what the run trained and scored on: the splits without the excluded images
    results = run.metrics
    assert sum(m["n"] for m in results.values() if "n" in m) <= 28
    resumed = imgclass.train(resume=str(run.dir))  # resume reads splits.csv: same split, edits kept
    assert _rows(resumed.dir) == rows


def test_edits_refuse_paths_and_labels_that_are_not_in_the_data(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=3)
    found = CLASSES.find(LabelSource(data))
    (tmp_path / "typo.csv").write_text("path,quality\ncat/img9.png,0.1\n")
    with pytest.raises(UserError, match="not images in the data.*cat/img9.png"):
        apply_edits(found, exclude=tmp_path / "typo.csv")
    (tmp_path / "bad.csv").write_text("path,label\ncat/img0.png,zebra\n")
    with pytest.raises(UserError, match="'zebra', not a class"):
        apply_edits(found, relabel=tmp_path / "bad.csv")
    (tmp_path / "cols.csv").write_text("file,class\ncat/img0.png,dog\n")
    with pytest.raises(UserError, match="path,label"):
        apply_edits(found, relabel=tmp_path / "cols.csv")
    with pytest.raises(UserError, match="cannot read"):
        apply_edits(found, exclude=tmp_path / "missing.txt")


def test_the_exclude_file_may_be_checks_label_issues_csv(tmp_path):
    (tmp_path / "issues.csv").write_text("path,split,given_label,suggested_label\ncat/img0.png,train,cat,dog\n"
                                         "dog/img1.png,val,dog,cat\n")
    assert read_paths(tmp_path / "issues.csv") == ["cat/img0.png", "dog/img1.png"]
    found = apply_edits(CLASSES.find(LabelSource(make_class_folders(tmp_path / "data", per_class=3))), exclude=tmp_path / "issues.csv")
    assert len(found.items) == 7 and found.excluded == [("cat/img0.png", "cat"), ("dog/img1.png", "dog")]


def test_exclude_reads_back_the_paths_check_marked_for_spreadsheets(tmp_path):
    """issue 40, item 10: check writes a path like `=x.png` as `'=x.png` (text in a spreadsheet); --exclude reads
    the path it names."""
    from imgclass.data.edits import read_paths
    listed = tmp_path / "label_issues.csv"
    listed.write_text("path,given_label\n'=cat/x.png,cat\n-dog/y.png,dog\n'plain.png,cat\n")
    assert read_paths(listed) == ["=cat/x.png", "-dog/y.png", "'plain.png"]
