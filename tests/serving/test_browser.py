"""End to end in a real browser: Playwright drives Debian's Chromium (installed by `make test` when it may)
to open the upload page, upload an image and read the predicted label. Without Chromium the test is
skipped with the command that enables it; in CI (IMGCLASS_REQUIRE_BROWSER=1) a missing browser fails."""

import numpy as np

import imgclass
from imgclass.serving.app import create_app

from helpers import CHROMIUM, FLAGS, make_tagged_folder, need_chromium as _need_chromium, running_server, tiny_image

def _in_chromium(model, act, address="/", prepare=None, **options):
    """Serve `model` (create_app's options) on a free port, open the upload page at `address` in Chromium, and
    return act(page); prepare(page) runs before the page opens (e.g. to answer its dialogs)."""
    from playwright.sync_api import sync_playwright
    with running_server(create_app(model, **options)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page()
        if prepare is not None:
            prepare(page)
        page.goto(f"{url}{address}")
        try:
            return act(page)
        finally:
            browser.close()


def test_upload_page_in_chromium(trained_run, tmp_path):
    _need_chromium()
    image = tmp_path / "fish.png"
    tiny_image(2, np.random.RandomState(11), 40).save(image)
    expected = imgclass.predict(trained_run, [image])[0]["top_k"][0]["label"]

    def act(page):
        page.set_input_files("#file", str(image))
        label = page.wait_for_selector("#top-label", timeout=20_000).inner_text()
        page.click("#explain")                   # the heatmap of the top class, from POST /explain
        page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=20_000)
        page.screenshot(path=str(tmp_path / "page.png"))
        return label, page.evaluate("document.getElementById('heatmap').naturalWidth")
    label, heat_width = _in_chromium(trained_run, act)
    assert label == expected
    assert heat_width == imgclass.load(trained_run).pre.img_size   # the overlay at the model's input size


def test_upload_page_takes_the_key_from_the_fragment_or_a_prompt(trained_run, tmp_path, monkeypatch):
    """With an API key: page#key=KEY works and the key leaves the address bar at once; without it the page asks."""
    _need_chromium()
    monkeypatch.delenv("IMGCLASS_API_KEY", raising=False)
    key = "a-long-browser-key"
    image = tmp_path / "fish.png"
    tiny_image(2, np.random.RandomState(11), 40).save(image)
    expected = imgclass.predict(trained_run, [image])[0]["top_k"][0]["label"]

    def act(page):
        address = page.url
        page.set_input_files("#file", str(image))
        return address, page.wait_for_selector("#top-label", timeout=20_000).inner_text()
    address, label = _in_chromium(trained_run, act, f"/#key={key}", api_key=key)
    assert label == expected and key not in address and address.endswith("/")
    asked = []

    def answer(page):
        page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept(key)))
    _, label = _in_chromium(trained_run, act, "/", prepare=answer, api_key=key)
    assert label == expected and asked and "API key" in asked[0]


def test_upload_page_shows_the_tags_given_as_chips(tmp_path):
    """Several tags per image: the page shows the tags given (at their thresholds) as chips above the bars."""
    _need_chromium()
    data, labels = make_tagged_folder(tmp_path)
    run = imgclass.train(data, labels=str(labels), multi_label=True, model="cnn", model_args={"width": 8, "depth": 2},
                         img_size=16, epochs=8, batch_size=16, hflip=False, out=str(tmp_path / "run"), verbose=False,
                         tensorboard=False, evaluate=False, workers=1)
    image = data / "im0.png"
    answer = imgclass.predict(run.dir, [image], runtime="torch", precision="float32")[0]

    def act(page):
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#top-label", timeout=20_000)
        page.screenshot(path=str(tmp_path / "tags.png"))
        return page.eval_on_selector_all("#tags .chip", "chips => chips.map(c => c.textContent)"), \
            page.inner_text("#tags")
    chips, text = _in_chromium(run.dir, act)
    assert [c.rsplit(" ", 1)[0] for c in chips] == [t["label"] for t in answer["labels"]]
    assert chips or text == "no tag given"


def test_upload_page_answers_unknown_when_asked(trained_run, tmp_path):
    """The page's checkbox sends ?reject=true (again for the image shown): one below the model's threshold is shown
    as unknown."""
    import dataclasses
    from imgclass.models.modelfile import load_model, save_model
    _need_chromium()
    model, header = load_model(trained_run / "model.safetensors")
    strict = tmp_path / "strict.safetensors"
    save_model(strict, model, dataclasses.replace(header, reject=dataclasses.replace(header.reject, threshold=1.0)))
    image = tmp_path / "fish.png"
    tiny_image(2, np.random.RandomState(11), 40).save(image)

    def act(page):
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#top-label", timeout=20_000)
        plain = page.query_selector("#unknown") is None
        page.check("#reject")  # the page asks again for the image shown, now with ?reject=true
        return plain, page.wait_for_selector("#unknown", timeout=20_000).inner_text()
    plain, text = _in_chromium(strict, act)
    assert plain and text.startswith("unknown")
