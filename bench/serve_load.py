"""Serving load test on loopback only (bounded in requests and time; stops by itself).

Serves a CIFAR-size model (the default `fast` network, 32 px, 10 classes) with `imgclass serve`
and with a naive Flask app that runs the eager PyTorch model per request, then sends the same
JPEG from N concurrent clients. Reports requests/s and p50/p99 latency per concurrency, the ratio
at concurrency 8, and ONNX Runtime against eager PyTorch images/s for the same model.

    python bench/serve_load.py [--requests 400 --concurrency 1 8 16]
"""
from __future__ import annotations

import argparse
import http.client
import io
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import machine

MAX_SECONDS = 60  # per load run, whatever the request count


def make_model(path: Path) -> None:
    from imgclass.data.preprocess import Preprocessing
    from imgclass.modelfile import model_header, save_model
    from imgclass.models import create_model
    torch.manual_seed(0)
    model = create_model("fast", num_classes=10).eval()
    pre = Preprocessing(img_size=32, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    classes = [f"class{i}" for i in range(10)]
    save_model(path, model, model_header({"name": "fast", "args": {}, "dropout": 0.0}, classes, pre, tta="none"))


NAIVE = textwrap.dedent('''
    import io, sys, torch
    from flask import Flask, request, jsonify
    from PIL import Image
    import torchvision.transforms.functional as TF
    from imgclass.modelfile import load_model
    model, header = load_model(sys.argv[1])
    classes = header["classes"]
    app = Flask(__name__)
    @app.post("/predict")
    def predict():
        img = Image.open(io.BytesIO(request.files["file"].read())).convert("RGB").resize((32, 32))
        x = TF.normalize(TF.to_tensor(img), [0.49, 0.48, 0.45], [0.25, 0.24, 0.26])[None]
        with torch.no_grad():
            p = torch.softmax(model(x), 1)[0]
        top = torch.topk(p, 3)
        return jsonify({"top_k": [{"label": classes[i], "probability": float(v)} for v, i in zip(top.values, top.indices)]})
    app.run(host="127.0.0.1", port=int(sys.argv[2]), threaded=True)
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server on port {port} did not start")


def multipart(jpeg: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + jpeg + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def load(port: int, body: bytes, ctype: str, requests: int, concurrency: int) -> dict:
    latencies: list[float] = []
    deadline = time.time() + MAX_SECONDS

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(n):
            if time.time() > deadline:
                break
            started = time.perf_counter()
            conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"HTTP {response.status}")
            latencies.append(time.perf_counter() - started)
        conn.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, [requests // concurrency] * concurrency))
    wall = time.perf_counter() - started
    lat = np.array(latencies)
    return {"rps": len(lat) / wall, "p50": np.percentile(lat, 50) * 1000, "p99": np.percentile(lat, 99) * 1000,
            "n": len(lat)}


def runtime_throughput(model_file: Path, tmp: Path, batch: int = 64, rounds: int = 20) -> tuple[float, float]:
    import onnxruntime as ort
    from imgclass.export.exporter import export_model
    from imgclass.modelfile import load_model
    model, _ = load_model(model_file)
    onnx_file, _ = export_model(model_file, "onnx", tmp / "m.onnx")
    x = torch.rand(batch, 3, 32, 32) * 255
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    mean = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1) * 255
    rates = []
    for fn in (lambda: torch.softmax(model((x - mean) / std), 1), lambda: session.run(None, {"pixels": x.numpy()})):
        with torch.no_grad():
            fn()
            started = time.perf_counter()
            for _ in range(rounds):
                fn()
        rates.append(batch * rounds / (time.perf_counter() - started))
    return rates[0], rates[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    args = ap.parse_args()
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    body, ctype = multipart(buf.getvalue())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_file = tmp / "model.safetensors"
        make_model(model_file)
        (tmp / "naive.py").write_text(NAIVE)
        servers = {"imgclass serve": [sys.executable, "-m", "imgclass", "serve", str(model_file), "--port", "{port}"],
                   "naive Flask + eager PyTorch": [sys.executable, str(tmp / "naive.py"), str(model_file), "{port}"]}
        for name, cmd in servers.items():
            port = free_port()
            proc = subprocess.Popen([c.format(port=port) for c in cmd], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))
            try:
                wait_up(port)
                load(port, body, ctype, 20, 2)  # warm up
                results[name] = {c: load(port, body, ctype, args.requests, c) for c in args.concurrency}
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        eager, onnx = runtime_throughput(model_file, tmp)
    print(f"date {date.today()}  machine: {machine()}")
    print(f"command: python bench/serve_load.py --requests {args.requests} --concurrency "
          f"{' '.join(map(str, args.concurrency))}")
    for name, per in results.items():
        for c, r in per.items():
            print(f"{name:28s} concurrency {c:2d}: {r['rps']:6.1f} req/s  p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms"
                  f"  ({r['n']} requests)")
    if 8 in args.concurrency:
        ours, naive = results["imgclass serve"][8], results["naive Flask + eager PyTorch"][8]
        print(f"at concurrency 8: {ours['rps']:.0f} req/s (target >= 100: {'MET' if ours['rps'] >= 100 else 'MISSED'}), "
              f"p99 {ours['p99']:.0f} ms (target <= 100: {'MET' if ours['p99'] <= 100 else 'MISSED'}), "
              f"{ours['rps'] / naive['rps']:.2f}x the naive service (target >= 3x: "
              f"{'MET' if ours['rps'] / naive['rps'] >= 3 else 'MISSED'})")
    print(f"batch-64 inference: eager PyTorch {eager:,.0f} img/s, ONNX Runtime {onnx:,.0f} img/s, ratio "
          f"{onnx / eager:.2f}x (target >= 1.5x: {'MET' if onnx / eager >= 1.5 else 'MISSED'})")


if __name__ == "__main__":
    main()
