"""Serving load test on loopback only (bounded in requests and time; stops by itself).

Serves the photo default (EfficientNet-Lite0 with its ImageNet weights, 224 px, 10 classes; see
common.photo_model) with `imgclass serve` (dynamic batching, the runtime it chooses) and with a naive
Flask app that runs the eager PyTorch model once per request, then sends the same 640 x 480 JPEG from N
concurrent clients. Reports requests/s and p50/p99 latency per concurrency and the ratio at concurrency 8
(targets: >= 3x the naive service, p99 <= 500 ms). --sweep also serves with other batching settings
(max batch size / delay), which is how the defaults were chosen.

    python bench/serve_load.py [--requests 400 --concurrency 1 8 16] [--sweep]
"""
from __future__ import annotations

import argparse
import http.client
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

from common import PHOTO_MODEL, machine, photo_jpeg, photo_model

MAX_SECONDS = 90  # per load run, whatever the request count (requests under way then still finish)


NAIVE = textwrap.dedent('''
    import io, sys, torch
    from flask import Flask, request, jsonify
    from PIL import Image
    import torchvision.transforms.functional as TF
    from imgclass.models.modelfile import load_model
    model, header = load_model(sys.argv[1])
    classes = list(header.classes)
    app = Flask(__name__)
    @app.post("/predict")
    def predict():
        img = Image.open(io.BytesIO(request.files["file"].read())).convert("RGB").resize((224, 224))
        x = TF.normalize(TF.to_tensor(img), [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])[None]
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


def wait_up(port: int, timeout: float = 300) -> None:  # imgclass serve may export and time the model first
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

    failures: list[str] = []

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(n):
            if time.time() > deadline:
                break
            started = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
                response = conn.getresponse()
                response.read()
            except OSError as exc:  # a timeout or a dropped connection: counted, and a new connection
                failures.append(type(exc).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            if response.status != 200:
                failures.append(f"HTTP {response.status}")
                continue
            latencies.append(time.perf_counter() - started)
        conn.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, [requests // concurrency] * concurrency))
    wall = time.perf_counter() - started
    lat = np.array(latencies)
    return {"rps": len(lat) / wall, "p50": np.percentile(lat, 50) * 1000, "p99": np.percentile(lat, 99) * 1000,
            "n": len(lat), "failed": len(failures)}


def run_server(cmd: list[str], body: bytes, ctype: str, requests: int, levels: list[int]) -> dict:
    port = free_port()
    proc = subprocess.Popen([c.format(port=port) for c in cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"), text=True)
    try:
        wait_up(port)
        load(port, body, ctype, 16, 4)  # warm up
        return {c: load(port, body, ctype, requests, c) for c in levels}
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        choice = [line for line in err.splitlines() if "runtime:" in line]
        if choice:
            print("  " + choice[0].strip())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--sweep", action="store_true", help="also try other --max-batch-size/--max-batch-delay-ms")
    args = ap.parse_args()
    body, ctype = multipart(photo_jpeg())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_file = photo_model(tmp / "model.safetensors")
        (tmp / "naive.py").write_text(NAIVE)
        serve = [sys.executable, "-m", "imgclass", "serve", str(model_file), "--port", "{port}"]
        servers = {"imgclass serve": serve,
                   "naive Flask + eager PyTorch": [sys.executable, str(tmp / "naive.py"), str(model_file), "{port}"]}
        if args.sweep:
            for size, delay in ((1, 0), (8, 2), (32, 10), (16, 0)):
                servers[f"imgclass serve, batch {size}, delay {delay} ms"] = serve + [
                    "--max-batch-size", str(size), "--max-batch-delay-ms", str(delay)]
        for name, cmd in servers.items():
            print(f"{name} ...", flush=True)
            results[name] = run_server(cmd, body, ctype, args.requests, args.concurrency)
    print(f"date {date.today()}  machine: {machine()}")
    print(f"command: python bench/serve_load.py --requests {args.requests} --concurrency "
          f"{' '.join(map(str, args.concurrency))}{' --sweep' if args.sweep else ''}")
    print(f"model: {PHOTO_MODEL} at 224 px; one 640 x 480 JPEG ({len(body)} bytes with the form) per request")
    for name, per in results.items():
        for c, r in per.items():
            print(f"{name:44s} concurrency {c:2d}: {r['rps']:6.1f} req/s  p50 {r['p50']:6.1f} ms  p99 {r['p99']:7.1f} ms"
                  f"  ({r['n']} answered" + (f", {r['failed']} failed" if r["failed"] else "") + ")")
    if 8 in args.concurrency:
        ours, naive = results["imgclass serve"][8], results["naive Flask + eager PyTorch"][8]
        ratio = ours["rps"] / naive["rps"]
        print(f"at concurrency 8: {ours['rps']:.1f} req/s = {ratio:.2f}x the naive service (target >= 3x: "
              f"{'MET' if ratio >= 3 else 'MISSED'}), p99 {ours['p99']:.0f} ms (target <= 500: "
              f"{'MET' if ours['p99'] <= 500 else 'MISSED'})")


if __name__ == "__main__":
    main()
