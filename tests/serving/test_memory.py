"""The service under a batch of 10,000 tiny images: the answer, and the server process's peak memory."""
import base64
import io
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from imgclass.data.preprocess import Preprocessing
from imgclass.models.modelfile import model_header, save_model
from imgclass.models.header import Architecture
from imgclass.models import create_model
from imgclass.serving.app import create_app

from helpers import free_port, local_client

N = 10_000
SIZE = 128  # decoded all at once, 10,000 images at 128 px are 490 MB of uint8 and 2 GB as float32


def _model_file(tmp_path: Path) -> Path:
    """An untrained model file at SIZE px: its weights do not matter for memory."""
    arch = Architecture("cnn", {"width": 4, "depth": 1})
    path = tmp_path / "model.safetensors"
    save_model(path, create_model("cnn", 3, **arch.args), model_header(arch, ["a", "b", "c"],
                                                                       Preprocessing(img_size=SIZE)))
    return path


def _tiny_gifs() -> list[str]:
    out = []
    for i in range(N):
        buf = io.BytesIO()
        Image.new("P", (1, 1), i % 256).save(buf, "GIF")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_default_limit_refuses_10000_images_before_decoding(tmp_path):
    client = local_client(create_app(_model_file(tmp_path), runtime="torch"))
    r = client.post("/predict/batch", json={"images": _tiny_gifs()})
    assert r.status_code == 413 and "at most 64 images" in r.json()["detail"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from /proc")
def test_10000_images_are_answered_in_bounded_memory(tmp_path):
    """An operator who raises --max-batch to 10,000: every image answered, and the server's peak memory
    grows by less than a quarter of what one batch of decoded pixels would take (chunks of 16)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "imgclass", "serve", str(_model_file(tmp_path)), "--port",
                               str(port), "--max-batch", str(N)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                time.sleep(0.1)
        gifs = _tiny_gifs()
        assert _post(url + "/predict/batch", {"images": gifs[:64]})[0] == 200   # warm: model and threads
        before = _peak_rss_mb(server.pid)
        status, body = _post(url + "/predict/batch", {"images": gifs})
        grown = _peak_rss_mb(server.pid) - before
        assert status == 200 and len(body["results"]) == N
        assert all(len(r["top_k"]) == 3 for r in body["results"])
        assert grown < 0.25 * N * 3 * SIZE * SIZE / 2**20, f"peak memory grew by {grown:.0f} MB"
        assert urllib.request.urlopen(url + "/health", timeout=5).status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
