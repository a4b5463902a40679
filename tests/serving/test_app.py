"""Every endpoint and every error of the service; its answer equals `imgclass predict`."""
import base64
import io

import numpy as np
import pytest

import imgclass
from imgclass.serving.app import create_app

from helpers import assert_same_answers, local_client, png_bytes
from messy import png_bomb


@pytest.fixture(scope="module")
def client(trained_run):
    return local_client(create_app(trained_run, runtime="torch", precision="float32", max_upload_mb=0.05))


def test_page_health_info_docs(client, trained_run):
    page = client.get("/")
    assert page.status_code == 200 and "<input" in page.text and 'type="file"' in page.text
    assert "http://" not in page.text and "https://" not in page.text      # no external assets
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["classes"] == ["cat", "dog", "fish"] and info["input_size"] == 8 and info["runtime"] == "torch"
    assert "test" in info["metrics"]
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/predict", "/predict/batch", "/health", "/info"}
    assert client.get("/docs").status_code == 200


def test_predict_equals_cli_predict(client, trained_run, tmp_path):
    blob = png_bytes(1)
    (tmp_path / "x.png").write_bytes(blob)
    expected = imgclass.predict(trained_run, [tmp_path / "x.png"], top_k=3, runtime="torch",
                                precision="float32")[0]["top_k"]
    r = client.post("/predict", files={"file": ("x.png", blob, "image/png")}, params={"k": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "cnn"
    assert [t["label"] for t in body["top_k"]] == [t["label"] for t in expected]
    assert np.allclose([t["probability"] for t in body["top_k"]], [t["probability"] for t in expected], atol=1e-6)
    r2 = client.post("/predict", json={"image": base64.b64encode(blob).decode()}, params={"k": 3})
    assert r2.json()["top_k"] == body["top_k"]


def test_batch(client):
    files = [("files", ("a.png", png_bytes(0), "image/png")), ("files", ("b.txt", b"hello", "text/plain")),
             ("files", ("c.png", png_bytes(2), "image/png"))]
    results = client.post("/predict/batch", files=files).json()["results"]
    assert results[0]["top_k"][0]["label"] == "cat" and "not an image" in results[1]["error"]
    assert results[2]["top_k"][0]["label"] == "fish"


@pytest.mark.parametrize("make,status,detail", [
    (lambda c: c.post("/predict", files={"other": ("x", b"1", "text/plain")}), 400, "no file"),
    (lambda c: c.post("/predict", files={"file": ("x.png", b"", "image/png")}), 400, "empty"),
    (lambda c: c.post("/predict", files={"file": ("x.png", b"<html>", "image/png")}), 415, "not an image"),
    (lambda c: c.post("/predict", files={"file": ("x.png", png_bytes()[:60], "image/png")}), 400, "truncat|cannot"),
    (lambda c: c.post("/predict", files={"file": ("b.png", png_bomb(), "image/png")}), 400, "decompression bomb"),
    (lambda c: c.post("/predict", content=b"raw", headers={"content-type": "text/plain"}), 415, "multipart"),
    (lambda c: c.post("/predict", json={"image": "%%%"}), 400, "base64"),
    (lambda c: c.post("/predict", json={"nothing": 1}), 400, "image"),
    (lambda c: c.post("/predict", files={"file": ("big.png", b"\0" * 60_000, "image/png")}), 413, "larger than"),
    # hostile or malformed JSON: a JSON 4xx each, never a 500 (issue 14, item 3)
    (lambda c: c.post("/predict/batch", content=b"[" * 20_000 + b"]" * 20_000,
                      headers={"content-type": "application/json"}), 400, "invalid JSON"),
    (lambda c: c.post("/predict/batch", json={"images": 5}), 400, "must be a list"),
    (lambda c: c.post("/predict/batch", json={"images": ["R0lGODlhAQABAAAAACw="] * 65}), 413, "at most 64"),
    (lambda c: c.post("/predict/batch", files=[("files", (f"{i}.png", b"x", "image/png")) for i in range(65)]),
     413, "at most 64"),
])
def test_errors_are_json_and_server_stays_up(client, make, status, detail):
    import re
    r = make(client)
    assert r.status_code == status, r.text
    assert re.search(detail, r.json()["detail"])
    assert client.get("/health").status_code == 200


def test_upload_refused_from_content_length(client):
    # Content-Length says 10 MB: refused without reading a body that is not even sent whole
    r = client.post("/predict", content=b"x" * 10, headers={"content-type": "multipart/form-data; boundary=z",
                                                          "content-length": str(10 * 1024 * 1024)})
    assert r.status_code == 413


def test_chunked_upload_over_the_limit_is_a_json_413(client):
    """No Content-Length (a streamed body): refused as JSON once the body passes the limit."""
    def body():
        for _ in range(20):
            yield b"\0" * 4096
    r = client.post("/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=z"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    assert client.get("/health").status_code == 200


def torch_predictor(run):
    from imgclass.inference.predictor import Predictor
    return Predictor.load(run, "cpu")


def test_large_batch_is_decoded_in_chunks_with_the_same_answers(trained_run, monkeypatch):
    """A batch of 40 is decoded 16 at a time (memory bounded by the chunk); answers as one by one."""
    predictor = torch_predictor(trained_run)
    decoded = []
    real = type(predictor.pre).load
    monkeypatch.setattr(type(predictor.pre), "load", lambda pre, blob, **kw: decoded.append(len(decoded)) or real(pre, blob, **kw))
    client = local_client(create_app(predictor, max_upload_mb=5))
    blobs = [png_bytes(i % 3) for i in range(40)]
    out = client.post("/predict/batch", json={"images": [base64.b64encode(b).decode() for b in blobs]}).json()
    assert len(decoded) == 40 and client.app.state.batcher.calls >= 3   # three chunks, three batches at least
    assert_same_answers([r["top_k"] for r in out["results"]],                # batches of 16 against one of 40
                        [r["top_k"] for r in predictor.predict(blobs, top_k=3)])


def test_an_odd_decoder_error_fails_only_its_item(trained_run, monkeypatch):
    predictor = torch_predictor(trained_run)
    real = type(predictor.pre).load
    odd = png_bytes(1)
    monkeypatch.setattr(type(predictor.pre), "load",
                        lambda pre, b, **kw: (_ for _ in ()).throw(OSError("odd")) if b == odd else real(pre, b, **kw))
    client = local_client(create_app(predictor))
    out = client.post("/predict/batch", json={"images": [base64.b64encode(b).decode()
                                                         for b in (png_bytes(0), odd, png_bytes(2))]}).json()
    assert "top_k" in out["results"][0] and "top_k" in out["results"][2]
    assert "OSError" in out["results"][1]["error"]
    r = client.post("/predict", files={"file": ("x.png", odd, "image/png")})
    assert r.status_code == 400 and "OSError" in r.json()["detail"]


def test_metrics_label_routes_not_raw_paths(trained_run):
    client = local_client(create_app(trained_run))
    for i in range(50):
        assert client.get(f"/no/such/path/{i}").status_code == 404
    text = client.get("/metrics").text
    assert "/no/such/path" not in text
    assert 'imgclass_requests_total{endpoint="unmatched",status="404"} 50.0' in text


def test_metrics_count_requests(client):
    client.get("/health")
    text = client.get("/metrics").text
    assert 'imgclass_requests_total{endpoint="/health",status="200"}' in text
    assert "imgclass_request_seconds_bucket" in text
    assert 'status="415"' in text or 'status="400"' in text


def test_api_key_and_cors(trained_run, monkeypatch):
    monkeypatch.delenv("IMGCLASS_API_KEY", raising=False)
    secured = local_client(create_app(trained_run, api_key="s3cret-key"))
    files = {"file": ("x.png", png_bytes(), "image/png")}
    assert secured.post("/predict", files=files).status_code == 401
    assert secured.post("/predict", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
    assert secured.post("/predict", files=files, headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert secured.get("/health").status_code == 200
    plain = local_client(create_app(trained_run))
    r = plain.options("/predict", headers={"Origin": "http://example.com", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers                       # CORS off by default
    open_app = local_client(create_app(trained_run, cors_origins=["http://example.com"]))
    r = open_app.options("/predict", headers={"Origin": "http://example.com", "Access-Control-Request-Method": "POST"})
    assert r.headers.get("access-control-allow-origin") == "http://example.com"


def test_onnx_runtime_gives_the_same_answer(trained_run):
    blob = png_bytes(0)
    torch_app = local_client(create_app(trained_run, runtime="torch", precision="float32"))
    onnx_app = local_client(create_app(trained_run, runtime="onnx"))
    a = torch_app.post("/predict", files={"file": ("x.png", blob, "image/png")}).json()
    b = onnx_app.post("/predict", files={"file": ("x.png", blob, "image/png")}).json()
    assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
    assert np.allclose([t["probability"] for t in a["top_k"]], [t["probability"] for t in b["top_k"]], atol=1e-4)
    assert onnx_app.get("/info").json()["runtime"] == "onnx"
    assert torch_app.get("/info").json()["runtime"] == "torch"


def test_api_key_guards_info_and_metrics_too(trained_run, monkeypatch):
    """issue 14, item 5: with a key set, /info and /metrics need it as well; the page and /health do not."""
    monkeypatch.setenv("IMGCLASS_API_KEY", "from-the-environment")
    secured = local_client(create_app(trained_run))
    for path in ("/info", "/metrics", "/info/"):
        assert secured.get(path).status_code == 401, path
        assert "API key" in secured.get(path).json()["detail"]
    assert secured.get("/info", headers={"X-API-Key": "from-the-environment"}).status_code == 200
    assert secured.get("/").status_code == 200 and secured.get("/health").status_code == 200


def test_api_key_comes_from_a_file_not_the_command_line(tmp_path):
    from imgclass.cli import build_parser
    from imgclass.core.errors import UserError
    from imgclass.serving.app import read_api_key
    key = tmp_path / "key.txt"
    key.write_text("  correct-horse-battery  \nsecond line ignored\n")
    assert read_api_key(key) == "correct-horse-battery"
    key.write_text("short\n")
    with pytest.raises(UserError, match="at least 8"):
        read_api_key(key)
    with pytest.raises(UserError, match="at least 8"):
        read_api_key(tmp_path / "missing")
    with pytest.raises(UserError, match="--api-key: .*shows in `ps`"):
        build_parser().parse_args(["serve", "run", "--api-key", "s3cret"])


def test_serve_passes_connection_limits_and_never_exports_the_key(trained_run, tmp_path, monkeypatch):
    import os

    import torch
    import uvicorn
    from imgclass.serving import app as app_module
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    monkeypatch.delenv("IMGCLASS_API_KEY", raising=False)
    threads = torch.get_num_threads()
    key = tmp_path / "key"
    key.write_text("a-long-secret-key\n")
    try:
        app_module.serve(trained_run, app_module.ServeSettings(api_key_file=str(key), max_concurrent=2))
        assert seen["host"] == "127.0.0.1" and seen["limit_concurrency"] == app_module.LIMITS.connections
        assert seen["timeout_keep_alive"] == app_module.LIMITS.keep_alive_seconds
        from imgclass.serving.protocol import DeadlineH11Protocol
        assert seen["http"] is DeadlineH11Protocol                # request heads have a deadline (test_protocol.py)
        assert DeadlineH11Protocol.header_seconds == app_module.LIMITS.header_seconds
        assert torch.get_num_threads() == (os.cpu_count() or 1)  # one process: the model (one thread) has the cores
        assert "a-long-secret-key" not in "".join(os.environ.values())
        assert local_client(seen["app"]).get("/info").status_code == 401
        app_module.serve(trained_run, app_module.ServeSettings(workers=2, api_key_file=str(key)))
        assert seen["app"] == "imgclass.serving.app:app_from_env" and seen["workers"] == 2
        assert "a-long-secret-key" not in "".join(os.environ.values())
        assert str(key) in os.environ["IMGCLASS_SERVE_SETTINGS"]
        worker_app = app_module.app_from_env()       # what each worker process builds
        assert local_client(worker_app).get("/info", headers={"X-API-Key": "a-long-secret-key"}).status_code == 200
    finally:
        torch.set_num_threads(threads)
        os.environ.pop("IMGCLASS_SERVE_SETTINGS", None)


def test_serving_has_its_own_lower_pixel_limit(trained_run):
    """A model file cannot raise it, and the service's default is below training's."""
    from imgclass.data.decode import DEFAULT_MAX_PIXELS
    from imgclass.serving.app import SERVE_MAX_PIXELS
    assert SERVE_MAX_PIXELS < DEFAULT_MAX_PIXELS
    client = local_client(create_app(trained_run, max_pixels=100))
    r = client.post("/predict", files={"file": ("x.png", png_bytes(0, size=12), "image/png")})  # 144 pixels
    assert r.status_code == 400 and "decompression bomb" in r.json()["detail"]
    assert client.post("/predict", files={"file": ("x.png", png_bytes(0, size=9), "image/png")}).status_code == 200


def test_concurrent_requests_wait_for_a_slot(trained_run, monkeypatch):
    """issue 14, item 2: at most max_concurrent requests decode at once."""
    import threading
    import time as clock
    from concurrent.futures import ThreadPoolExecutor
    predictor = torch_predictor(trained_run)
    real, active, peak, lock = type(predictor.pre).load, [0], [0], threading.Lock()

    def slow(pre, blob, **kw):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        clock.sleep(0.05)
        try:
            return real(pre, blob, **kw)
        finally:
            with lock:
                active[0] -= 1
    monkeypatch.setattr(type(predictor.pre), "load", slow)
    import httpx

    from helpers import running_server
    for slots in (1, 2):
        peak[0] = 0
        with running_server(create_app(predictor, max_concurrent=slots)) as url, ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: httpx.post(f"{url}/predict", timeout=30, files={
                "file": ("x.png", png_bytes(i % 3), "image/png")}).status_code, range(16)))
        assert codes == [200] * 16
        assert peak[0] == slots


def test_a_body_that_trickles_in_gets_a_json_408():
    """A slow client cannot hold a request open: the whole body must arrive within body_seconds."""
    import asyncio
    import json as json_module
    from imgclass.serving.app import UploadLimit
    reached = []

    async def inner(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        reached.append(True)

    async def slow_receive():
        await asyncio.sleep(0.2)
        return {"type": "http.request", "body": b"x", "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)
    scope = {"type": "http", "method": "POST", "headers": []}
    asyncio.run(UploadLimit(inner, max_bytes=10 ** 6, body_seconds=0.5)(scope, slow_receive, send))
    assert sent[0]["status"] == 408 and not reached
    assert "too slowly" in json_module.loads(sent[1]["body"])["detail"]


def test_explain_returns_the_heatmap_of_the_top_class(client, trained_run):
    from PIL import Image
    from urllib.parse import unquote
    r = client.post("/explain", files={"file": ("cat.png", png_bytes(0), "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    predicted = imgclass.predict(trained_run, [io.BytesIO(png_bytes(0))], top_k=1, runtime="torch",  # the model the
                                 precision="float32")[0]["top_k"][0]                                 # heatmap uses
    assert unquote(r.headers["x-label"]) == predicted["label"]
    assert float(r.headers["x-probability"]) == pytest.approx(predicted["probability"], abs=1e-5)
    size = imgclass.load(trained_run).pre.img_size
    assert Image.open(io.BytesIO(r.content)).size == (size, size)
    j = client.post("/explain?format=json", json={"image": base64.b64encode(png_bytes(1)).decode()}).json()
    assert j["label"] and Image.open(io.BytesIO(base64.b64decode(j["image"]))).format == "PNG"
    assert client.post("/explain", files={"file": ("x.png", b"not an image", "image/png")}).status_code == 415


def test_explain_needs_the_pytorch_model(trained_run, tmp_path):
    """Under --runtime onnx the service still has the model file, so /explain works; an .onnx file alone has
    no gradients: 501."""
    with_model = local_client(create_app(trained_run, runtime="onnx"))
    assert with_model.post("/explain", files={"file": ("cat.png", png_bytes(0), "image/png")}).status_code == 200
    from imgclass.inference.graph import export_model
    onnx_file, _ = export_model(trained_run, "onnx", tmp_path / "m.onnx")
    bare = local_client(create_app(onnx_file))
    r = bare.post("/explain", files={"file": ("cat.png", png_bytes(0), "image/png")})
    assert r.status_code == 501 and "ONNX export" in r.json()["detail"]
    assert bare.get("/info").json()["runtime"] == "onnx"


def test_concurrent_heatmaps_equal_single_ones(trained_run):
    """Grad-CAM hooks the model it runs: concurrent /explain requests of different images, with /predict traffic
    through the batcher on the same PyTorch model, must each get the heatmap a lone request gets."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from helpers import running_server
    app = create_app(trained_run, runtime="torch", precision="float32", max_concurrent=8)
    blobs = [png_bytes(label, size=12 + 2 * label) for label in range(6)]
    with running_server(app) as url:
        def explain(blob):
            r = httpx.post(f"{url}/explain", files={"file": ("x.png", blob, "image/png")}, timeout=60)
            assert r.status_code == 200, r.text
            return r.headers["x-label"], r.content
        alone = [explain(blob) for blob in blobs]
        stop = threading.Event()

        def predicting():
            while not stop.is_set():
                httpx.post(f"{url}/predict", files={"file": ("x.png", blobs[0], "image/png")}, timeout=60)
        with ThreadPoolExecutor(10) as pool:
            background = [pool.submit(predicting) for _ in range(2)]
            together = list(pool.map(explain, blobs * 4))
            stop.set()
            for b in background:
                b.result()
    assert together == alone * 4


def test_health_and_info_answer_while_uploads_wait(trained_run, monkeypatch):
    """Uploads waiting for a decoding slot hold no thread: /health, /info, /metrics and the page still answer at
    once, and an upload that waits past slot_seconds gets a JSON 503 with Retry-After."""
    import threading
    import time as clock
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from helpers import running_server
    predictor = torch_predictor(trained_run)
    real = type(predictor.pre).load
    monkeypatch.setattr(type(predictor.pre), "load",
                        lambda pre, blob, **kw: (clock.sleep(2.0), real(pre, blob, **kw))[1])
    app = create_app(predictor, max_concurrent=1, slot_seconds=6.0)
    with running_server(app) as url, ThreadPoolExecutor(60) as pool:
        uploads = [pool.submit(httpx.post, f"{url}/predict", timeout=60,
                               files={"file": ("x.png", png_bytes(0), "image/png")}) for _ in range(55)]
        clock.sleep(1.0)                                                 # they are all in, waiting
        for path in ("/health", "/info", "/metrics", "/"):
            started = clock.monotonic()
            assert httpx.get(f"{url}{path}", timeout=10).status_code == 200, path
            assert clock.monotonic() - started < 1.5, path               # not after an upload's 2 s decode
        codes = [f.result().status_code for f in uploads]
        busy = next(f.result() for f in uploads if f.result().status_code == 503)
    assert set(codes) == {200, 503} and codes.count(200) <= 6            # one slot, 2 s each, 6 s of waiting
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
    assert threading.active_count() < 200


def test_uploads_reach_only_the_common_decoders_and_a_bounded_decode(trained_run):
    """JPEG, PNG, WebP, GIF, BMP and TIFF are decoded; every other format Pillow knows gets 415 unread (EPS would
    run Ghostscript); an image whose decode would pass --max-decode-mb gets 400 before decoding."""
    from PIL import Image
    client = local_client(create_app(trained_run, runtime="torch", precision="float32", max_decode_mb=32))
    image = Image.new("RGB", (16, 16), (200, 30, 30))
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"):
        buf = io.BytesIO()
        image.save(buf, fmt)
        assert client.post("/predict", files={"file": ("x", buf.getvalue(), "image/png")}).status_code == 200, fmt
    for fmt in ("PPM", "TGA", "ICO", "PCX", "SGI", "IM"):
        buf = io.BytesIO()
        image.save(buf, fmt)
        r = client.post("/predict", files={"file": ("x", buf.getvalue(), "image/png")})
        assert r.status_code == 415 and "accepted format" in r.json()["detail"], fmt
    big = io.BytesIO()
    Image.new("RGBA", (2000, 2000)).save(big, "PNG")
    r = client.post("/predict", files={"file": ("x.png", big.getvalue(), "image/png")})
    assert r.status_code == 400 and "too large to decode" in r.json()["detail"]
    assert local_client(create_app(trained_run, runtime="torch", precision="float32")).post(
        "/predict", files={"file": ("x.png", big.getvalue(), "image/png")}).status_code == 200  # 300 MB by default
