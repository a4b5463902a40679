import pytest

from imgclass.data.find import find_images, natural_sorted
from imgclass.core.errors import DataError

from helpers import make_class_folders, make_labels_csv, make_split_folders


def test_natural_order():
    assert natural_sorted(["10", "2", "1", "b", "A"]) == ["1", "2", "10", "A", "b"]
    assert natural_sorted(["img10.png", "img2.png"]) == ["img2.png", "img10.png"]


def test_class_folders_natural_class_order(tmp_path):
    make_class_folders(tmp_path, classes=("10", "2", "1"), per_class=3)
    (tmp_path / "2" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("not an image")
    found = find_images(tmp_path)
    assert found.classes == ["1", "2", "10"]
    assert len(found.items) == 9 and all(s is None for _, _, s in found.items)


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_split_folders(tmp_path, val_name):
    make_split_folders(tmp_path, splits=("train", val_name, "test"))
    found = find_images(tmp_path)
    splits = {s for _, _, s in found.items}
    assert splits == {"train", "val", "test"}


def test_unlabelled_test_folder_is_noted(tmp_path):
    make_split_folders(tmp_path, splits=("train",))
    (tmp_path / "test").mkdir()
    from helpers import tiny_image
    import numpy as np
    tiny_image(0, np.random.RandomState(0)).save(tmp_path / "test" / "1.png")
    found = find_images(tmp_path)
    assert {s for _, _, s in found.items} == {"train"}
    assert any("without class folders" in n for n in found.notes)


def test_labels_csv_resolves_by_stem(tmp_path):
    csv_path = make_labels_csv(tmp_path, classes=("10", "2", "1"))
    found = find_images(tmp_path / "images", csv_path)
    assert found.classes == ["1", "2", "10"]
    assert len(found.items) == 30


def test_a_split_column_of_a_labels_csv_is_honoured(tmp_path):
    """issue 39: a one-class CSV's split column was silently ignored (only tags read it); the split made from it
    keeps every given split and carves nothing from the images it names."""
    from imgclass.data.labels import CLASSES, LabelSource
    from imgclass.data.split import make_split
    csv_path = make_labels_csv(tmp_path)
    rows = csv_path.read_text().splitlines()
    given = ["train" if i % 3 else "test" if i % 2 else "val" for i in range(len(rows) - 1)]
    csv_path.write_text("\n".join([rows[0] + ",split"] + [f"{r},{s}" for r, s in zip(rows[1:], given)]) + "\n")
    found = CLASSES.find(LabelSource(tmp_path / "images", csv_path))
    assert "(split column)" in found.layout
    by_id = {rel.rsplit(".", 1)[0]: split for rel, _, split in found.items}
    assert [by_id[r.split(",")[0]] for r in rows[1:]] == given
    split, _ = make_split(found, 0.1, 0.1, seed=0)
    assert {s: sorted(rel.rsplit(".", 1)[0] for rel, _ in rows_) for s, rows_ in split.items.items()} == \
        {s: sorted(r.split(",")[0] for r, g in zip(rows[1:], given) if g == s) for s in ("train", "val", "test")}
    csv_path.write_text(rows[0] + ",split\n" + rows[1] + ",holdout\n")
    with pytest.raises(DataError, match="split 'holdout' is not train, val or test"):
        CLASSES.find(LabelSource(tmp_path / "images", csv_path))


def test_labels_csv_no_match(tmp_path):
    csv_path = make_labels_csv(tmp_path)
    csv_path.write_text("id,label\nnope1,a\nnope2,b\n")
    with pytest.raises(DataError, match="none of the 2 ids"):
        find_images(tmp_path / "images", csv_path)


@pytest.mark.parametrize("setup,msg", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "no images found"),
    (lambda p: make_class_folders(p, classes=("only",), per_class=3), "at least 2 classes"),
])
def test_bad_folders(tmp_path, setup, msg):
    target = tmp_path / "d"
    setup(target)
    with pytest.raises(DataError, match=msg):
        find_images(target)
