"""The workbench end to end in Chromium (Playwright, as the upload page's test does): the runs list, a comparison,
a confusion-matrix cell's images checked against predictions.csv, and three suspects reviewed with the keyboard,
whose decisions the next `train --relabel --exclude` uses."""
from __future__ import annotations

import csv

import imgclass
from imgclass.core.rundir import RunDir
from imgclass.workbench.app import create_workbench

from helpers import CHROMIUM, FLAGS, FAST, need_chromium, running_server


TOKEN = "browser-test-token-0123"


def _rows(file):
    with file.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_workbench_in_chromium(own_runs, tmp_path):
    need_chromium()
    from playwright.sync_api import sync_playwright
    runs, data = own_runs
    predictions = _rows(runs / "short" / "eval" / "test" / "predictions.csv")
    with running_server(create_workbench(runs, token=TOKEN)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        try:
            page.goto(f"{url}/?token={TOKEN}")
            page.wait_for_selector("#runs-table tr[data-run]")
            assert "token" not in page.url                           # traded for a cookie and dropped
            assert sorted(page.eval_on_selector_all("#runs-table tr[data-run]", "rs => rs.map(r => r.dataset.run)")
                          ) == ["long", "short"]
            page.screenshot(path=str(tmp_path / "runs.png"))
            for box in page.query_selector_all("#runs-table .pick"):
                box.check()
            page.click("#compare-button")
            page.wait_for_selector("#compare-table tbody tr")
            assert page.eval_on_selector_all("#compare-table tbody tr", "rs => rs.length") == 2

            page.goto(f"{url}/#/run/short/test")
            page.wait_for_selector("#matrix")
            cell = page.query_selector("#matrix td.cell.diag")
            i, j = (int(x) for x in cell.get_attribute("data-key").split(":")[1:])
            classes = page.eval_on_selector_all("#matrix thead th", "hs => hs.slice(1).map(h => h.textContent)")
            cell.click()
            page.wait_for_selector(f"#gallery[data-key='cell:{i}:{j}'] .tile")
            shown = page.eval_on_selector_all("#gallery .tile", "ts => ts.map(t => t.dataset.path)")
            assert sorted(shown) == sorted(r["path"] for r in predictions
                                           if r["label"] == classes[i] and r["prediction"] == classes[j])

            page.goto(f"{url}/#/review/long")
            page.click("#find-suspects")
            page.wait_for_selector("#suspect", timeout=120_000)
            decided = []
            for key, action in (("x", "exclude"), ("r", "relabel"), ("k", "keep")):
                path = page.get_attribute("#suspect", "data-path")
                suggested = page.evaluate("document.querySelectorAll('#review-card b')[1].textContent")
                page.keyboard.press(key)
                page.wait_for_function(f"document.getElementById('suspect').dataset.path !== {path!r}"
                                       f" || document.getElementById('decision').className !== 'muted'")
                decided.append((path, action, suggested))
        finally:
            browser.close()
    review = runs / "long" / "review"
    assert _rows(review / "exclude.csv") == [{"path": decided[0][0]}]
    assert _rows(review / "relabel.csv") == [{"path": decided[1][0], "label": decided[1][2]}]
    run = imgclass.train(data, out=str(tmp_path / "next"), relabel=str(review / "relabel.csv"),
                         exclude=str(review / "exclude.csv"), **FAST)
    splits = {r["path"]: r for r in RunDir(run.dir).read_csv(RunDir(run.dir).splits)}
    assert splits[decided[0][0]]["split"] == "excluded"
    assert splits[decided[1][0]]["label"] == decided[1][2]
