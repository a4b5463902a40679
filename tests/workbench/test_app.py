"""The workbench's routes (imgclass.workbench.app) through an HTTP client: who may use it, and that what it shows is
what the runs' files hold (predictions.csv, results.json, compare's table) and what it writes is what train reads."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

import imgclass
from imgclass.core.rundir import RunDir
from imgclass.evaluation.compare import compare_rows
from imgclass.workbench.app import COOKIE, create_workbench

from helpers import FAST, local_client

TOKEN = "a-test-token-of-some-length"
SAME_ORIGIN = {"origin": "http://127.0.0.1"}


@pytest.fixture(scope="module")
def client(runs_folder):
    runs, data = runs_folder
    c = local_client(create_workbench(runs, token=TOKEN))
    c.cookies.set(COOKIE, TOKEN)
    return c


def _predictions(run, split="test"):
    with (run / "eval" / split / "predictions.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_request_needs_the_token_and_a_change_the_same_origin(own_runs):
    runs, _ = own_runs
    c = local_client(create_workbench(runs, token=TOKEN))
    assert c.get("/api/runs").status_code == 401
    assert c.get("/").status_code == 401
    assert c.get("/?token=wrong", follow_redirects=False).status_code == 401
    first = c.get(f"/?token={TOKEN}", follow_redirects=False)  # the URL printed: traded for a cookie, then dropped
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert "httponly" in first.headers["set-cookie"].lower() and "samesite=strict" in first.headers["set-cookie"].lower()
    c.cookies.set(COOKIE, TOKEN)
    assert c.get("/api/runs").status_code == 200
    assert local_client(create_workbench(runs, token=TOKEN)).get(
        "/api/runs", headers={"x-workbench-token": TOKEN}).status_code == 200
    change = {"run": "short", "path": "cat/img0.png", "action": "keep"}
    assert c.post("/api/review/decide", json=change).status_code == 403                 # no Origin
    assert c.post("/api/review/decide", json=change, headers={"origin": "http://evil.example"}).status_code == 403
    assert c.get("/api/runs", headers={"host": "evil.example"}).status_code == 400       # DNS rebinding
    assert not (runs / "short" / "review").exists()                                      # nothing was written


def test_the_runs_list_and_compare_say_what_the_runs_files_hold(client, runs_folder):
    runs, _ = runs_folder
    listed = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(listed) == {"short", "long"}
    for name, row in listed.items():
        results = RunDir(runs / name).read_results()
        assert row["scores"]["val accuracy"] == pytest.approx(results["metrics"]["val"]["accuracy"])
        assert row["epochs"] == results["epochs_run"] and row["evaluated"] == ["test", "val"]
    shown = client.get("/api/compare", params={"run": ["short", "long"]}).json()
    table = compare_rows([runs / "short", runs / "long"])
    assert shown["columns"] == table.columns and shown["cells"] == table.cells()
    assert shown["curves"].startswith("data:image/png;base64,")
    test = [json.loads((runs / n / "eval" / "test" / "metrics.json").read_text()) for n in ("short", "long")]
    assert shown["per_class"]["items"] == ["cat", "dog", "fish"]
    assert shown["per_class"]["runs"]["long"] == [test[1]["per_class"][c]["f1"] for c in ("cat", "dog", "fish")]


def test_each_confusion_cell_opens_exactly_its_images(client, runs_folder):
    runs, _ = runs_folder
    rows = _predictions(runs / "short")
    picture = client.get("/api/cells", params={"run": "short", "split": "test"}).json()["view"]
    classes = picture["classes"]
    expected = confusion_matrix([r["label"] for r in rows], [r["prediction"] for r in rows], labels=classes)
    assert np.array_equal(picture["counts"], expected)
    for i, true in enumerate(classes):
        for j, predicted in enumerate(classes):
            shown = client.get("/api/gallery", params={"run": "short", "split": "test", "key": f"cell:{i}:{j}"})
            if expected[i, j] == 0:
                assert shown.status_code == 404
                continue
            paths = [it["path"] for it in shown.json()["items"]]
            assert sorted(paths) == sorted(r["path"] for r in rows if r["label"] == true and r["prediction"] == predicted)
            confidence = [float(it["fields"]["confidence"]) for it in shown.json()["items"]]
            assert confidence == sorted(confidence, reverse=True)


def test_galleries_are_paginated(client, runs_folder):
    runs, _ = runs_folder
    rows = _predictions(runs / "long")
    key = "unsure:0"
    whole = client.get("/api/gallery", params={"run": "long", "split": "test", "key": key, "limit": 200}).json()
    pages = [client.get("/api/gallery", params={"run": "long", "split": "test", "key": key, "offset": o, "limit": 2}
                        ).json()["items"] for o in range(0, whole["total"], 2)]
    assert [it["path"] for page in pages for it in page] == [it["path"] for it in whole["items"]]
    assert whole["total"] == sum(r["label"] == r["prediction"] == "cat" for r in rows)


def test_images_are_served_only_when_the_run_lists_them(client, runs_folder):
    _, data = runs_folder
    ok = client.get("/api/thumb", params={"run": "short", "path": "cat/img0.png"})
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    for path in ("../data/cat/img0.png", "/etc/passwd", "cat/../cat/img0.png", "cat/missing.png"):
        assert client.get("/api/thumb", params={"run": "short", "path": path}).status_code == 404
    assert client.get("/api/thumb", params={"run": "nope", "path": "cat/img0.png"}).status_code == 404
    assert client.get("/api/figure", params={"run": "short", "split": "test", "name": "../metrics"}).status_code == 404


def test_heatmap_and_neighbours_of_an_image(client):
    heat = client.get("/api/heatmap", params={"run": "long", "path": "dog/img3.png"})
    assert heat.status_code == 200 and heat.content[:8] == b"\x89PNG\r\n\x1a\n"
    near = client.get("/api/similar", params={"run": "long", "path": "dog/img3.png", "k": 4}).json()["items"]
    assert len(near) == 4 and "dog/img3.png" not in [n["path"] for n in near]
    assert [n["similarity"] for n in near] == sorted((n["similarity"] for n in near), reverse=True)


def test_review_decisions_become_the_files_train_reads(own_runs, tmp_path):
    """Three decisions, saved as they are made; a new workbench resumes them; train --relabel/--exclude uses them."""
    runs, data = own_runs
    app = create_workbench(runs, token=TOKEN)
    c = local_client(app)
    c.cookies.set(COOKIE, TOKEN)
    state = c.get("/api/review", params={"run": "long"}).json()
    assert state["suspects"] is None                       # none found yet
    decisions = [("cat/img1.png", "keep", None), ("dog/img2.png", "relabel", "fish"), ("fish/img4.png", "exclude", None)]
    for path, action, label in decisions:
        r = c.post("/api/review/decide", json={"run": "long", "path": path, "action": action, "label": label},
                   headers=SAME_ORIGIN)
        assert r.status_code == 200
    state = r.json()
    assert state["decided"] == 3
    assert c.post("/api/review/decide", json={"run": "long", "path": "nope.png", "action": "keep"},
                  headers=SAME_ORIGIN).status_code == 404
    assert c.post("/api/review/decide", json={"run": "long", "path": "cat/img1.png", "action": "burn"},
                  headers=SAME_ORIGIN).status_code == 400
    review = runs / "long" / "review"
    assert (review / "relabel.csv").read_text() == "path,label\ndog/img2.png,fish\n"
    assert (review / "exclude.csv").read_text() == "path\nfish/img4.png\n"
    again = local_client(create_workbench(runs, token=TOKEN))   # closed and opened again: the decisions are there
    again.cookies.set(COOKIE, TOKEN)
    assert again.get("/api/review", params={"run": "long"}).json()["decided"] == 3
    assert f"--relabel {review / 'relabel.csv'}" in state["command"] and f"--exclude {review / 'exclude.csv'}" in state["command"]
    run = imgclass.train(data, out=str(tmp_path / "next"), relabel=str(review / "relabel.csv"),
                         exclude=str(review / "exclude.csv"), **FAST)
    splits = {r["path"]: r for r in RunDir(run.dir).read_csv(RunDir(run.dir).splits)}
    assert splits["dog/img2.png"]["label"] == "fish"
    assert splits["fish/img4.png"]["split"] == "excluded"
    assert splits["cat/img1.png"]["label"] == "cat"


def test_try_it_answers_as_the_service_does(client, runs_folder):
    runs, data = runs_folder
    image = (data / "fish" / "img0.png").read_bytes()
    shown = client.post("/try/long/predict", files={"file": ("fish.png", image, "image/png")}, headers=SAME_ORIGIN)
    expected = imgclass.predict(runs / "long", [data / "fish" / "img0.png"])[0]["top_k"][0]
    assert shown.status_code == 200
    assert shown.json()["top_k"][0]["label"] == expected["label"]
    assert shown.json()["top_k"][0]["probability"] == pytest.approx(expected["probability"], abs=2e-3)
    assert client.get("/try/nope/info").status_code == 404


def test_thumbnails_are_made_once_and_the_cache_stays_bounded(tmp_path, runs_folder):
    from imgclass.workbench.thumbs import Thumbnails
    _, data = runs_folder
    folder = tmp_path / "thumbs"
    thumbs = Thumbnails(folder, max_bytes=10**9)
    first = thumbs.jpeg(data / "cat" / "img0.png")
    kept = list(folder.glob("*/*.jpg"))
    assert len(kept) == 1 and kept[0].read_bytes() == first
    kept[0].write_bytes(b"kept")                                  # the second call reads the cache, not the image
    assert thumbs.jpeg(data / "cat" / "img0.png") == b"kept"
    for n in range(1, 8):
        thumbs.jpeg(data / "dog" / f"img{n}.png")
    size = sum(f.stat().st_size for f in folder.glob("*/*.jpg"))
    thumbs.max_bytes = size // 2
    thumbs.prune()
    assert 0 < sum(f.stat().st_size for f in folder.glob("*/*.jpg")) <= size // 2


def test_the_page_puts_server_text_in_as_text():
    """Every name on the page is set with textContent or an attribute (app.js's h()), never parsed as HTML."""
    from importlib import resources
    script = resources.files("imgclass.workbench").joinpath("static/app.js").read_text()
    assert not any(s in script for s in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"))


def test_imgclass_app_prints_a_url_whose_token_opens_the_runs(runs_folder):
    """The verb as a user starts it: `imgclass app RUNS --port P` prints the URL with its token; that URL's cookie
    lists the runs; the server listens on 127.0.0.1 only."""
    import re
    import subprocess
    import sys
    import time
    import httpx
    from helpers import free_port
    runs, _ = runs_folder
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "imgclass", "app", str(runs), "--port", str(port)],
                               stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.time() + 120
        while "token=" not in line and time.time() < deadline:
            line = process.stderr.readline()
        url = re.search(r"http://\S+", line).group(0)
        assert url.startswith(f"http://127.0.0.1:{port}/?token=")
        for _ in range(100):
            try:
                with httpx.Client(follow_redirects=True) as client:
                    client.get(url)
                    names = sorted(r["name"] for r in client.get(f"http://127.0.0.1:{port}/api/runs").json()["runs"])
                break
            except httpx.ConnectError:
                time.sleep(0.2)
        assert names == ["long", "short"]
    finally:
        process.terminate()
        process.wait(timeout=30)
