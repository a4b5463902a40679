"""Dynamic batching (issue 19): concurrent requests share model calls and each still gets its own answer
(equal to single-image prediction) and its own errors; a full queue answers 503 JSON with Retry-After."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from imgclass.inference.predictor import Predictor
from imgclass.serving.app import create_app
from imgclass.serving.batcher import Batcher, Batching, QueueFull

from helpers import local_client, png_bytes, running_server


def test_batcher_groups_waiting_images_and_answers_each():
    calls = []
    gate = threading.Event()

    def score(pixels):
        gate.wait(5)                      # the first call blocks until the others have queued
        calls.append(len(pixels))
        return pixels.reshape(len(pixels), -1)[:, :2].astype(np.float32)
    batcher = Batcher(score, max_batch_size=8, max_delay_s=0.5, max_queue=64)
    images = [np.full((2, 2, 3), i, np.uint8) for i in range(10)]
    first = batcher.submit(images[:1])
    time.sleep(0.1)                       # within the first image's 0.5 s delay, 9 more arrive: the first
    rest = batcher.submit(images[1:])     # call takes 8 at once, the next the other 2
    gate.set()
    answers = [f.result(5) for f in first + rest]
    assert [int(a[0]) for a in answers] == list(range(10))       # each image its own row, in order
    assert sum(calls) == 10 and len(calls) <= 3 and max(calls) == 8   # 10 images in at most 3 calls of <= 8


def test_a_full_queue_refuses_all_or_nothing():
    gate = threading.Event()
    batcher = Batcher(lambda p: (gate.wait(5), np.zeros((len(p), 2)))[1], max_batch_size=2, max_delay_s=0,
                      max_queue=4)
    held = batcher.submit([np.zeros((2, 2, 3), np.uint8)] * 2)     # taken by the (blocked) model call
    time.sleep(0.1)
    queued = batcher.submit([np.zeros((2, 2, 3), np.uint8)] * 4)   # fills the queue
    with pytest.raises(QueueFull, match="--max-queue 4"):
        batcher.submit([np.zeros((2, 2, 3), np.uint8)])
    gate.set()
    assert all(f.result(5).shape == (2,) for f in held + queued)


def test_a_failing_model_call_fails_only_its_batch():
    fail = {"now": True}

    def score(pixels):
        if fail.pop("now", False):
            raise RuntimeError("boom")
        return np.ones((len(pixels), 3))
    batcher = Batcher(score, max_batch_size=4, max_delay_s=0, max_queue=8)
    bad = batcher.submit([np.zeros((2, 2, 3), np.uint8)])[0]
    with pytest.raises(RuntimeError, match="boom"):
        bad.result(5)
    assert batcher.submit([np.zeros((2, 2, 3), np.uint8)])[0].result(5).tolist() == [1, 1, 1]  # it goes on


@pytest.fixture()
def counted(trained_run):
    """A service on the torch runtime whose model calls are counted and slowed, so requests pile up."""
    predictor = Predictor.load(trained_run, "cpu")
    engine, calls = predictor.engine, []

    def slow(images):
        calls.append(len(images))
        time.sleep(0.05)
        return engine(images)
    predictor.engine = slow
    app = create_app(predictor, batching=Batching(max_batch_size=16, max_delay_ms=20, max_queue=256))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:  # one event loop, as served
        yield client, predictor, calls, engine


def test_concurrent_requests_share_batches_with_single_image_answers(counted):
    client, predictor, calls, engine = counted
    blobs = [png_bytes(i % 3) for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda b: client.post("/predict", files={"file": ("x.png", b, "image/png")},
                                                      params={"k": 3}).json(), blobs))
    assert sum(calls) == 24 and len(calls) < 24 and max(calls) > 1       # fewer model calls than requests
    predictor.engine = engine
    for blob, answer in zip(blobs, answers):
        alone = predictor.predict([blob], top_k=3)[0]["top_k"]            # the same image on its own
        assert [t["label"] for t in answer["top_k"]] == [t["label"] for t in alone]
        assert np.allclose([t["probability"] for t in answer["top_k"]], [t["probability"] for t in alone],
                           atol=1e-5)
    assert "imgclass_batch_size_count" in client.get("/metrics").text


def test_one_bad_image_fails_only_its_own_request(counted):
    client, _, calls, _ = counted
    blobs = [png_bytes(0), b"not an image", png_bytes(1), png_bytes(2), b"GIF89a broken"]
    with ThreadPoolExecutor(5) as pool:
        codes = list(pool.map(lambda b: client.post("/predict", files={"file": ("x.png", b, "image/png")}).status_code,
                              blobs))
    assert [codes[0], codes[2], codes[3]] == [200] * 3 and codes[1] in (400, 415) and codes[4] in (400, 415)
    assert sum(calls) == 3


def test_a_full_queue_answers_503_json_with_retry_after(trained_run):
    predictor = Predictor.load(trained_run, "cpu")
    gate, engine = threading.Event(), predictor.engine
    predictor.engine = lambda images: (gate.wait(10), engine(images))[1]
    app = create_app(predictor, batching=Batching(max_batch_size=1, max_delay_ms=0, max_queue=2))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client.post, "/predict", files={"file": ("x.png", png_bytes(0), "image/png")})
                   for _ in range(6)]
        time.sleep(1.0)                   # two queued (and one in the model if the batcher took it first)
        refused = [f.result() for f in futures if f.done()]
        gate.set()
        answered = [f.result() for f in futures]
    assert refused and all(r.status_code == 503 for r in refused)
    assert refused[0].headers["retry-after"] == "1" and "busy" in refused[0].json()["detail"]
    assert sorted({r.status_code for r in answered}) == [200, 503]
    # The queue holds two; whether a third fits depends on whether the batcher thread took the first image out
    # before the others arrived (CI once saw it not scheduled in time under a loaded 2-core runner: 2 answered).
    assert sum(r.status_code == 200 for r in answered) in (2, 3)


def test_a_waiter_that_gave_up_does_not_stop_the_batcher():
    """A cancelled Future (a client gone, a timeout, shutdown) is skipped; the thread goes on answering."""
    gate = threading.Event()
    batcher = Batcher(lambda p: (gate.wait(5), np.zeros((len(p), 2)))[1], max_batch_size=1, max_delay_s=0,
                      max_queue=8)
    image = np.zeros((2, 2, 3), np.uint8)
    held = batcher.submit([image])            # in the (blocked) model call
    time.sleep(0.1)
    gave_up, waiting = batcher.submit([image]), batcher.submit([image])
    assert gave_up[0].cancel()
    gate.set()
    assert held[0].result(5).shape == (2,) and waiting[0].result(5).shape == (2,)
    assert batcher.submit([image])[0].result(5).shape == (2,) and batcher.alive


def test_a_model_answering_too_few_rows_fails_only_its_batch():
    short = {"now": True}

    def score(pixels):
        rows = np.zeros((len(pixels), 2))
        return rows[:-1] if short.pop("now", False) else rows
    batcher = Batcher(score, max_batch_size=4, max_delay_s=0.2, max_queue=8)
    first = batcher.submit([np.zeros((2, 2, 3), np.uint8)] * 3)
    for future in first:                      # every image of the batch gets the error: none waits forever
        with pytest.raises(RuntimeError, match="2 rows for 3 images"):
            future.result(5)
    assert batcher.submit([np.zeros((2, 2, 3), np.uint8)])[0].result(5).shape == (2,)


def test_a_request_waits_for_the_model_at_most_max_wait(trained_run):
    predictor = Predictor.load(trained_run, "cpu")
    gate, engine = threading.Event(), predictor.engine
    predictor.engine = lambda images: (gate.wait(10), engine(images))[1]
    app = create_app(predictor, batching=Batching(max_batch_size=1, max_delay_ms=0, max_queue=8, max_wait_s=0.5))
    with running_server(app) as url:
        started = time.monotonic()
        r = httpx.post(f"{url}/predict", files={"file": ("x.png", png_bytes(0), "image/png")}, timeout=30)
        assert r.status_code == 504 and "0.5 s" in r.json()["detail"] and time.monotonic() - started < 5
        gate.set()
        assert httpx.post(f"{url}/predict", files={"file": ("x.png", png_bytes(0), "image/png")},
                          timeout=30).status_code == 200


def test_health_says_503_when_the_batching_thread_is_dead(trained_run):
    app = create_app(trained_run, runtime="torch", precision="float32")
    client = local_client(app)
    assert client.get("/health").json() == {"status": "ok"}
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    app.state.batcher._thread = dead          # as if the thread had ended
    r = client.get("/health")
    assert r.status_code == 503 and "stopped" in r.json()["status"]
