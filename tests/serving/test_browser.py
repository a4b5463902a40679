"""End to end in a real browser: Playwright drives Debian's Chromium (installed by `make test` when it may)
to open the upload page, upload an image and read the predicted label. Without Chromium the test is
skipped with the command that enables it; in CI (IMGCLASS_REQUIRE_BROWSER=1) a missing browser fails."""
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import uvicorn

import imgclass
from imgclass.serving.app import create_app

from helpers import tiny_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ENABLE = "sudo apt-get install chromium (or run `make test` as root)"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_upload_page_in_chromium(trained_run, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("IMGCLASS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"Chromium is required here (IMGCLASS_REQUIRE_BROWSER=1) and not installed: {ENABLE}")
        pytest.skip(f"Chromium is not installed; {ENABLE} enables this test")
    from playwright.sync_api import sync_playwright
    image = tmp_path / "fish.png"
    tiny_image(2, np.random.RandomState(11), 40).save(image)
    expected = imgclass.predict(trained_run, [image])[0]["top_k"][0]["label"]

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(trained_run), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("#file", str(image))
            label = page.wait_for_selector("#top-label", timeout=20_000).inner_text()
            page.click("#explain")                   # the heatmap of the top class, from POST /explain
            page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=20_000)
            heat_width = page.evaluate("document.getElementById('heatmap').naturalWidth")
            page.screenshot(path=str(tmp_path / "page.png"))
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert label == expected
    assert heat_width == imgclass.load(trained_run).pre.img_size   # the overlay at the model's input size
