"""Several tags per image (issue 26, items 1 and 2): the CSV forms and the folder-copies layout, iterative
stratification, and what check reports."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from imgclass.cli import main
from imgclass.data.check import check_dataset
from imgclass.data.tags import multi_hot, multilabel_split, parse_tag_lists, read_tags, tag_statistics
from imgclass.core.errors import DataError

TAGS = ("red", "dress", "summer", "casual")
PROBABILITY = (0.5, 0.4, 0.3, 0.15)


def tagged_images(root, n=60, seed=0):
    """n tiny images (distinct pixels) and their random tags: [(file name, [tags])]."""
    rng = np.random.RandomState(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        Image.fromarray(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"img{i}.png")
        out.append((f"img{i}", [t for t, p in zip(TAGS, PROBABILITY) if rng.rand() < p]))
    return out


@pytest.mark.parametrize("cells,tags,form", [
    (["a;b", "c", ""], [["a", "b"], ["c"], []], "';'"),
    (["a|b", "b"], [["a", "b"], ["b"]], "'|'"),
    (["a, b", "c"], [["a", "b"], ["c"]], "','"),
    (["a b", "c"], [["a", "b"], ["c"]], "spaces"),
    (["Science Fiction;Drama", "Drama"], [["Science Fiction", "Drama"], ["Drama"]], "';'"),
    (["['Action', 'Drama']", "[]", '["Comedy"]', ""], [["Action", "Drama"], [], ["Comedy"], []], "a list"),
    (["a;a;b"], [["a", "b"]], "';'"),
])
def test_tag_list_forms_are_detected_and_said(cells, tags, form):
    got, said = parse_tag_lists(cells, "tags.csv")
    assert got == tags and form in said


def test_a_list_literal_is_parsed_never_run():
    for cell in ("[__import__('os').system('touch /tmp/owned')]", "[1, [2]]", "['a', True]"):
        with pytest.raises(DataError, match="row 2.*not a list of tag names"):
            parse_tag_lists([cell], "tags.csv")


def test_a_csv_of_tag_lists_with_a_split_column(tmp_path):
    images = tagged_images(tmp_path / "data")
    lines = ["id,tags,split"] + [f"{name},\"{';'.join(tags)}\",{'test' if i % 10 == 0 else ''}"
                                 for i, (name, tags) in enumerate(images)] + ["ghost,red,"]
    (tmp_path / "tags.csv").write_text("\n".join(lines) + "\n")
    found = read_tags(tmp_path / "data", tmp_path / "tags.csv")
    assert found.classes == sorted(TAGS, key=str.lower)
    by_path = {rel: (tuple(found.classes[t] for t in tags), split) for rel, tags, split in found.items}
    for i, (name, tags) in enumerate(images):
        assert set(by_path[f"{name}.png"][0]) == set(tags)
        assert by_path[f"{name}.png"][1] == ("test" if i % 10 == 0 else None)
    assert any("tags separated by ';'" in n for n in found.notes) and any("1 ids" in n for n in found.notes)
    split, _ = multilabel_split(found, 0.2, 0.2, 101)
    assert {rel for rel, _ in split["test"]} == {f"{name}.png" for i, (name, _) in enumerate(images) if i % 10 == 0}


def test_tag_columns_one_hot_ranges_and_attributes(tmp_path):
    images = tagged_images(tmp_path / "data", n=20)
    header = "file,colour," + ",".join(TAGS[1:]) + ",note"
    rows = [f"{name},{'red' if 'red' in tags else 'blue'}," + ",".join("1" if t in tags else "0" for t in TAGS[1:])
            + ",x" for name, tags in images]
    (tmp_path / "t.csv").write_text("\n".join([header] + rows) + "\n")
    by_range = read_tags(tmp_path / "data", tmp_path / "t.csv", tag_columns="dress:casual")
    listed = read_tags(tmp_path / "data", tmp_path / "t.csv", tag_columns="dress,summer,casual")
    assert by_range.items == listed.items and by_range.classes == sorted(TAGS[1:], key=str.lower)
    assert any("3 0/1 column(s)" in n for n in by_range.notes)
    attributes = read_tags(tmp_path / "data", tmp_path / "t.csv", tag_columns="colour,dress")
    assert set(attributes.classes) == {"red", "blue", "dress"}          # the colour column's values are tags
    assert any("1 0/1 column(s), one per tag and the values of 1 attribute column(s)" in n for n in attributes.notes)
    (tmp_path / "bad.csv").write_text("file,a,b\nimg0,1,2\nimg1,0,1\n")
    with pytest.raises(DataError, match="row 2, column 'b': '2' is not 0 or 1"):
        read_tags(tmp_path / "data", tmp_path / "bad.csv", tag_columns="a,b")
    with pytest.raises(DataError, match="no column 'nope'"):
        read_tags(tmp_path / "data", tmp_path / "t.csv", tag_columns="dress,nope")


def test_copies_in_several_folders_are_one_image_with_those_tags(tmp_path):
    images = tagged_images(tmp_path / "flat", n=30)
    data = tmp_path / "data"
    for name, tags in images:
        for tag in tags or ["casual"]:
            (data / tag).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp_path / "flat" / f"{name}.png", data / tag / f"{name}.png")
    found = read_tags(data)
    assert len(found.items) == 30 and found.layout.startswith("tag folders")
    got = sorted(tuple(sorted(found.classes[t] for t in tags)) for _, tags, _ in found.items)
    assert got == sorted(tuple(sorted(tags or ["casual"])) for _, tags in images)
    several = sum(len(tags) > 1 for _, tags in images)
    assert any(f"{several} of 30 images have copies in several tag folders" in n for n in found.notes)


def test_iterative_stratification_keeps_every_tag_in_every_split_and_is_repeatable(tmp_path):
    images = tagged_images(tmp_path / "data", n=200, seed=3)
    (tmp_path / "tags.csv").write_text("id,tags\n" + "\n".join(f"{n},{' '.join(t)}" for n, t in images) + "\n")
    found = read_tags(tmp_path / "data", tmp_path / "tags.csv")
    split, notes = multilabel_split(found, 0.1, 0.2, 101)
    again, _ = multilabel_split(found, 0.1, 0.2, 101)
    assert split == again and notes == []                                        # same files and seed: same split
    assert {len(v) for v in split.values()} and len(split["test"]) == 40 and len(split["val"]) == 20
    assert sorted(r for rows in split.values() for r, _ in rows) == sorted(rel for rel, _, _ in found.items)
    total = multi_hot([(r, t) for r, t, _ in found.items], len(found.classes)).sum(0)
    for name, share in (("test", 0.2), ("val", 0.1)):
        per_tag = multi_hot(split[name], len(found.classes)).sum(0)
        assert np.all(np.abs(per_tag - share * total) <= np.maximum(2, 0.25 * share * total)), (name, per_tag, total)
    other, _ = multilabel_split(found, 0.1, 0.2, 7)
    assert other["test"] != split["test"]                                         # the seed decides


def test_check_reports_tags(tmp_path, capsys):
    images = tagged_images(tmp_path / "data", n=40)
    (tmp_path / "tags.csv").write_text("id,tags\n" + "\n".join(f"{n},\"{';'.join(t)}\"" for n, t in images) + "\n")
    report = check_dataset(tmp_path / "data", tmp_path / "tags.csv", multi_label=True, workers=1)
    expected = {t: sum(t in tags for _, tags in images) for t in TAGS}
    assert report.counts["all"] == expected
    assert report.tag_stats["untagged"] == sum(not tags for _, tags in images)
    assert sum(report.tag_stats["tags_per_image"].values()) == 40
    pair = report.tag_stats["co_occurrence"][0]
    assert pair["images"] == sum({pair["a"], pair["b"]} <= set(tags) for _, tags in images)
    found = read_tags(tmp_path / "data", tmp_path / "tags.csv")   # every file is usable: the same statistics
    assert report.tag_stats == tag_statistics(multilabel_split(found, 0.1, 0.1, 101)[0], found.classes)
    out = tmp_path / "check.json"
    assert main(["check", str(tmp_path / "data"), "--labels", str(tmp_path / "tags.csv"), "--multi-label",
                 "--json", str(out), "--workers", "1"]) == 0
    printed = " ".join(capsys.readouterr().out.split())   # the terminal's width wraps lines anywhere
    assert "usable images per tag" in printed and "tags per image" in printed and "untagged images" in printed
    assert json.loads(out.read_text())["tag_stats"]["untagged"] == report.tag_stats["untagged"]
    assert main(["check", str(tmp_path / "data"), "--labels", str(tmp_path / "tags.csv"), "--multi-label",
                 "--hierarchy"]) == 2



def test_check_says_when_copies_in_several_folders_may_be_tags(tmp_path):
    images = tagged_images(tmp_path / "flat", n=12)
    for name, tags in images:
        for tag in tags or ["casual"]:
            (tmp_path / "data" / tag).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp_path / "flat" / f"{name}.png", tmp_path / "data" / tag / f"{name}.png")
    several = sum(len(tags) > 1 for _, tags in images)
    assert several
    plain = check_dataset(tmp_path / "data", workers=1)
    assert any(f"{several} image(s) have identical copies in different class folders" in n and "--multi-label" in n
               for n in plain.notes)
    tagged = check_dataset(tmp_path / "data", multi_label=True, workers=1)
    assert tagged.exact_duplicates == [] and sum(tagged.counts["all"].values()) == sum(len(t or ["x"]) for _, t in images)
