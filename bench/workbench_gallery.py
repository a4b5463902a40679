"""The workbench's gallery on a large split (issue 42: "a 100,000-row split's gallery page answers in under a second").

A small run is trained on tiny images, then its test evaluation is replaced by N generated rows (10 classes, a
model-like confusion: 90% right) for N = 100 and N = 100,000, and the workbench (`imgclass app`'s app, served by
uvicorn on 127.0.0.1, asked over HTTP as the page asks) is timed on: the split's picture (/api/cells: the first
request reads predictions.csv and groups it), then gallery pages of the largest cell (48 tiles) at offsets 0 and deep
inside. Prints seconds and the ratio of 100,000 rows to 100 rows, naming the CPU.

    python bench/workbench_gallery.py
"""
from __future__ import annotations

import csv
import io
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import machine  # noqa: E402
from helpers import FAST, make_class_folders, running_server  # noqa: E402

CLASSES = [f"class{i}" for i in range(10)]
TOKEN = "bench-token-0123456789"


def fake_predictions(file: Path, n: int, seed: int = 0) -> None:
    rng = np.random.RandomState(seed)
    truth = rng.randint(0, 10, n)
    right = rng.rand(n) < 0.9
    pred = np.where(right, truth, rng.randint(0, 10, n))
    probs = rng.dirichlet(np.ones(10) * 0.3, n)
    probs[np.arange(n), pred] += 1.0
    probs /= probs.sum(1, keepdims=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "prediction", "confidence"] + [f"prob_{c}" for c in CLASSES])
    for k in range(n):
        w.writerow([f"{CLASSES[truth[k]]}/{k}.png", CLASSES[truth[k]], CLASSES[pred[k]], f"{probs[k, pred[k]]:.9g}"]
                   + [f"{p:.9g}" for p in probs[k]])
    file.write_text(buf.getvalue())


def timed(url: str) -> tuple[float, bytes]:
    request = urllib.request.Request(url, headers={"X-Workbench-Token": TOKEN})
    start = time.perf_counter()
    with urllib.request.urlopen(request) as response:
        body = response.read()
    return time.perf_counter() - start, body


def measure(base: str, run: str) -> dict[str, float]:
    import json
    first, body = timed(f"{base}/api/cells?run={run}&split=test")
    counts = json.loads(body)["view"]["counts"]
    i = int(np.argmax([counts[c][c] for c in range(len(counts))]))
    total = counts[i][i]
    page0, _ = timed(f"{base}/api/gallery?run={run}&split=test&key=cell:{i}:{i}&offset=0&limit=48")
    deep, _ = timed(f"{base}/api/gallery?run={run}&split=test&key=cell:{i}:{i}&offset={max(0, total - 100)}&limit=48")
    again, _ = timed(f"{base}/api/cells?run={run}&split=test")
    return {"picture, first (reads the file)": first, "gallery page 1": page0, "gallery page deep inside": deep,
            "picture again": again}


def main() -> None:
    import imgclass
    from imgclass.workbench.app import create_workbench
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_class_folders(tmp / "data", classes=tuple(CLASSES), per_class=6)
        sizes = {"small": 100, "large": 100_000}
        for name in sizes:
            imgclass.train(data, out=str(tmp / "runs" / name), **dict(FAST, evaluate=True))
        for name, n in sizes.items():
            fake_predictions(tmp / "runs" / name / "eval" / "test" / "predictions.csv", n)
        with running_server(create_workbench(tmp / "runs", token=TOKEN)) as base:
            results = {name: measure(base, name) for name in sizes}
    print(f"{'request':34s} {'100 rows (s)':>13s} {'100,000 rows (s)':>17s} {'ratio':>7s}")
    for what in results["small"]:
        small, large = results["small"][what], results["large"][what]
        print(f"{what:34s} {small:13.4f} {large:17.4f} {large / small:7.1f}")
    worst = max(v for k, v in results["large"].items() if "first" not in k)
    print(f"100,000 rows: slowest page after the first read {worst:.3f} s (target < 1 s): "
          f"{'met' if worst < 1 else 'MISSED'}; first read {results['large']['picture, first (reads the file)']:.3f} s")


if __name__ == "__main__":
    main()
