"""The workbench with the other tasks: a run of tags and a run of numbers show their own picture (a table of tags, a
scatter), whose cells open exactly the images predictions.csv says, and their label review finds suspects."""
from __future__ import annotations

import csv
import json

import pytest

import imgclass
from imgclass.workbench.app import COOKIE, create_workbench

from helpers import FAST, local_client, make_numbered_folder, make_tagged_folder

TOKEN = "tasks-test-token-0123456789"
SMALL = dict(FAST, model_args={"width": 8, "depth": 2}, img_size=16, epochs=3, batch_size=16, hflip=False,
             evaluate=True)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    data, labels = make_tagged_folder(root / "tagged")
    imgclass.train(data, labels=str(labels), multi_label=True, out=str(root / "runs" / "tags"), **SMALL)
    data, labels = make_numbered_folder(root / "numbered")
    imgclass.train(data, labels=str(labels), label_column="target", regression=True, out=str(root / "runs" / "numbers"),
                   **SMALL)
    c = local_client(create_workbench(root / "runs", token=TOKEN))
    c.cookies.set(COOKIE, TOKEN)
    return c, root / "runs"


def _rows(run):
    with (run / "eval" / "test" / "predictions.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_tag_run_shows_a_table_whose_counts_open_their_images(client):
    c, runs = client
    rows = _rows(runs / "tags")
    view = c.get("/api/cells", params={"run": "tags", "split": "test"}).json()["view"]
    assert view["kind"] == "tags"
    for t, line in enumerate(view["tags"]):
        tag = line["tag"]
        wrong = [r["path"] for r in rows if tag in json.loads(r["predicted"]) and tag not in json.loads(r["labels"])]
        assert line["fp"] == len(wrong)
        if wrong:
            shown = c.get("/api/gallery", params={"run": "tags", "split": "test", "key": f"fp:{t}"}).json()
            assert sorted(it["path"] for it in shown["items"]) == sorted(wrong)


def test_a_number_run_shows_a_scatter_and_its_largest_errors(client):
    c, runs = client
    rows = _rows(runs / "numbers")
    view = c.get("/api/cells", params={"run": "numbers", "split": "test"}).json()["view"]
    assert view["kind"] == "scatter" and len(view["points"]) == len(rows)
    truth, predicted, k = view["points"][0]
    assert (truth, predicted) == pytest.approx((float(rows[k]["label"]), float(rows[k]["prediction"])))
    errors = c.get("/api/gallery", params={"run": "numbers", "split": "test", "key": "errors"}).json()["items"]
    assert errors[0]["path"] == max(rows, key=lambda r: abs(float(r["error"])))["path"]


@pytest.mark.parametrize("run", ["tags", "numbers"])
def test_label_review_works_for_tags_and_numbers(client, run):
    c, _ = client
    state = c.post("/api/review/find", params={"run": run}, headers={"origin": "http://127.0.0.1"}).json()
    assert state["suspects"] is not None
    labels = [s for s in state["suspects"] if s["reason"] == "label"]
    assert all(s["suggested_label"] != s["given_label"] for s in labels)
