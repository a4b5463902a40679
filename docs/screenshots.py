"""The workbench's screenshots in the README and docs/workbench.md (docs/images/*.png), taken in Chromium.

    .venv/bin/python docs/screenshots.py [RUNS_FOLDER]

Without a folder, the demo run and a 3-epoch run of the same digits are trained first (about a minute on 2
cores) in a temporary folder. Needs Chromium (`sudo apt-get install chromium`) and Playwright (the dev extra)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

IMAGES = Path(__file__).resolve().parent / "images"
TOKEN = "screenshot-token-0123456789"


def demo_runs(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "imgclass", "demo", "--out", str(folder / "runs" / "demo")], cwd=folder,
                   check=True)
    subprocess.run([sys.executable, "-m", "imgclass", "train", "demo-data/digits", "--out", str(folder / "runs" / "demo-3-epochs"),
                    "--model", "cnn", "--img-size", "16", "--resize", "stretch", "--no-hflip", "--epochs", "3"],
                   cwd=folder, check=True)
    return folder / "runs"


def serve(app) -> tuple[str, object]:
    import uvicorn
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def shoot(runs: Path) -> None:
    from playwright.sync_api import sync_playwright
    from imgclass.workbench.app import create_workbench
    os.chdir(runs.parent)  # the demo's config.yaml names its data relative to where it ran
    url, server = serve(create_workbench(runs, token=TOKEN))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    IMAGES.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/?token={TOKEN}")
        page.wait_for_selector("#runs-table tr[data-run]")
        page.screenshot(path=str(IMAGES / "runs.png"))
        name = page.eval_on_selector("#runs-table tr[data-run]", "r => r.dataset.run")
        for box in page.query_selector_all("#runs-table .pick"):
            box.check()
        page.click("#compare-button")
        page.wait_for_selector("#per-class")
        page.wait_for_timeout(300)
        page.screenshot(path=str(IMAGES / "compare.png"))
        page.goto(f"{url}/#/run/{name}/test")
        page.wait_for_selector("#matrix")
        page.click("#matrix td.cell.off")
        page.wait_for_selector("#gallery .tile img")
        page.wait_for_timeout(500)
        page.screenshot(path=str(IMAGES / "run.png"))
        page.goto(f"{url}/#/review/{name}")
        page.click("#find-suspects")
        page.wait_for_selector("#suspect", timeout=300_000)
        page.wait_for_selector("#neighbours .tile img", timeout=300_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(IMAGES / "review.png"))
        browser.close()
    server.should_exit = True
    print("written:", ", ".join(str(p) for p in sorted(IMAGES.glob("*.png"))))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        shoot(Path(sys.argv[1]).resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            shoot(demo_runs(Path(tmp)))
