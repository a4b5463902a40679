from imgclass.data.labels import CLASSES, LabelSource
from imgclass.data.split import make_split, splits_csv_text

from helpers import make_class_folders, make_split_folders


def test_stratified_and_byte_identical(tmp_path):
    make_class_folders(tmp_path / "d", per_class=20)
    found = CLASSES.find(LabelSource(tmp_path / "d"))
    a, _ = make_split(found, 0.1, 0.2, seed=101)
    b, _ = make_split(CLASSES.find(LabelSource(tmp_path / "d")), 0.1, 0.2, seed=101)
    assert splits_csv_text(a) == splits_csv_text(b)
    counts = a.counts()
    assert counts["val"] == [2, 2, 2] and counts["test"] == [4, 4, 4] and counts["train"] == [14, 14, 14]
    c, _ = make_split(found, 0.1, 0.2, seed=7)
    assert splits_csv_text(c) != splits_csv_text(a)
    all_paths = [p for s in a.items.values() for p, _ in s]
    assert len(all_paths) == len(set(all_paths)) == 60


def test_tiny_class_kept_in_training_with_warning(tmp_path):
    make_class_folders(tmp_path / "d", classes=("big", "small"), per_class=10)
    for f in list((tmp_path / "d" / "small").iterdir())[2:]:
        f.unlink()
    split, warnings = make_split(CLASSES.find(LabelSource(tmp_path / "d")), 0.1, 0.1, seed=1)
    assert split.counts()["train"][1] == 2 and split.counts()["val"][1] == 0
    assert any("'small' has 2 image(s)" in w for w in warnings)


def test_missing_val_carved_from_train(tmp_path):
    make_split_folders(tmp_path, splits=("train", "test"))
    split, _ = make_split(CLASSES.find(LabelSource(tmp_path)), 0.2, 0.1, seed=0)
    counts = split.counts()
    assert counts["test"] == [3, 3, 3]          # given test split kept as is
    assert counts["val"] == [2, 2, 2]           # 20% of 10 train images per class
    assert counts["train"] == [8, 8, 8]


def test_a_stratified_sample_keeps_every_class_and_every_tag():
    """The final scoring's train sample (and the rejection bank): each class, or each tag of a 0/1 matrix, keeps at
    least `least` rows where it has them."""
    import numpy as np
    from imgclass.data.split import stratified_sample
    classes = np.array([0] * 500 + [1] * 12)
    keep = stratified_sample(classes, 50, 10, seed=0)
    assert len(keep) == 50 and (classes[keep] == 1).sum() >= 10
    tags = np.zeros((500, 3), dtype=int)
    tags[:, 0] = 1
    tags[:15, 1] = 1
    tags[-11:, 2] = 1
    keep = stratified_sample(tags, 40, 10, seed=1)
    assert len(keep) == 40 and tags[keep, 1].sum() >= 10 and tags[keep, 2].sum() >= 10
    assert np.array_equal(keep, stratified_sample(tags, 40, 10, seed=1))  # seeded
