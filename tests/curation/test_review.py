"""Label review (curation/review.py): the suspects of every task on planted label errors, and decisions that are saved
as they are made, resumed, and read back by train's own readers."""
from __future__ import annotations

import json

import numpy as np

from imgclass.curation.review import DECISIONS_FILE, SUSPECTS, Decisions, read_suspects, write_suspects
from imgclass.data.edits import read_paths, read_relabels
from imgclass.data.labels import TAGS


def _features(n, dims=8, seed=0):
    return np.random.RandomState(seed).normal(0, 1, (n, dims)).astype(np.float32)


def test_number_suspects_are_the_planted_outliers_first():
    x = _features(300)
    y = 20 + 3 * x[:, 0] - 2 * x[:, 1] + np.random.RandomState(1).normal(0, 0.3, 300)
    planted = [5, 77, 201]
    y[planted] += 25
    found = SUSPECTS["regression"](x, [f"{v:.4f}" for v in y])
    assert sorted(s["index"] for s in found[:3]) == planted
    assert len(found) < 15                                  # the rest are within the noise
    assert abs(float(found[0]["suggested_label"]) - (y[found[0]["index"]] - 25)) < 2


def test_tag_suspects_find_a_dropped_tag():
    x = _features(240)
    names = ["red", "stripe", "dot"]
    tags = [[n for t, n in enumerate(names) if x[k, t] > 0.3] for k in range(240)]
    planted = [k for k in range(240) if "red" in tags[k] and x[k, 0] > 1.5][:3]
    for k in planted:
        tags[k].remove("red")                               # given without a tag its features clearly show
    found = SUSPECTS["multi-label"](x, [json.dumps(t) for t in tags])
    flagged = [s["index"] for s in found]
    assert set(planted) <= set(flagged[:10])
    assert all("red" in json.loads(s["suggested_label"]) for s in found if s["index"] in planted)


def test_class_suspects_find_swapped_labels():
    rng = np.random.RandomState(3)
    y = rng.randint(0, 3, 300)
    x = _features(300) + 4 * np.eye(8)[y]
    cells = [["cat", "dog", "fish"][v] for v in y]
    for k in (10, 20, 30):
        cells[k] = "dog" if cells[k] != "dog" else "cat"
    found = SUSPECTS["single-label"](x, cells)
    assert {10, 20, 30} <= {s["index"] for s in found[:6]}


def test_decisions_are_saved_resumed_and_read_by_train(tmp_path):
    folder = tmp_path / "review"
    d = Decisions(folder)
    d.decide("a/1.png", "keep")
    d.decide("a/2.png", "relabel", "b")
    d.decide("a/3.png", "exclude")
    d.decide("a/4.png", "exclude")
    d.undo("a/4.png")
    d.decide("a/5.png", "relabel", '=HYPERLINK("x")')          # a name that a spreadsheet would run
    assert read_relabels(d.relabel_file) == {"a/2.png": "b", "a/5.png": '=HYPERLINK("x")'}
    assert read_paths(d.exclude_file) == ["a/3.png"]
    d.relabel_file.unlink()                                     # killed after decisions.json, before the rest
    again = Decisions(folder)
    assert {p: x.action for p, x in again.all().items()} == {"a/1.png": "keep", "a/2.png": "relabel",
                                                             "a/3.png": "exclude", "a/5.png": "relabel"}
    assert read_relabels(again.relabel_file)["a/2.png"] == "b"
    assert json.loads((folder / DECISIONS_FILE).read_text())["decisions"][0] == {"path": "a/1.png", "action": "keep",
                                                                                 "label": None}


def test_suspects_round_trip_and_tags_can_be_relabelled(tmp_path):
    rows = [{"path": "x.png", "split": "train", "given_label": "=1+1", "suggested_label": "dog", "quality": 0.1}]
    write_suspects(tmp_path / "s.csv", rows)
    assert read_suspects(tmp_path / "s.csv")[0]["given_label"] == "=1+1"
    assert TAGS.relabel('["dot", "red"]', ["red", "stripe", "dot"], "relabel.csv") == (0, 2)


def test_near_copies_are_reviewed_too_leakage_first():
    from imgclass.curation.review import _copies
    from imgclass.prediction.embed import Embeddings
    x = _features(40, dims=16)
    x[7], x[30] = x[3] + 1e-3, x[12] + 1e-3                      # 3~7 in one split; 12~30 across two
    paths = tuple(f"{k}.png" for k in range(40))
    split_of = {p: ("test" if p == "30.png" else "train") for p in paths}
    emb = Embeddings(x, paths, tuple("a" for _ in paths), "/data", "test")
    found = _copies(emb, split_of, 0.99)
    assert [(s["reason"], {s["path"], s["other"]}) for s in found] == [("leakage", {"12.png", "30.png"}),
                                                                       ("near-duplicate", {"3.png", "7.png"})]
