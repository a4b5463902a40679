"""Tiny generated datasets: tests make their own images in temporary folders."""
from __future__ import annotations

import contextlib
import shutil
import csv
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = [(220, 40, 40), (40, 200, 60), (50, 60, 230), (230, 220, 40)]


def tiny_image(label: int, rng: np.random.RandomState, size: int = 12) -> Image.Image:
    """A noisy square whose colour tells its class: easy to learn in a couple of epochs."""
    base = np.array(COLORS[label % len(COLORS)], dtype=np.float32)
    pixels = base + rng.normal(0, 25, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_class_folders(root: Path, classes=("cat", "dog", "fish"), per_class: int = 12, seed: int = 0,
                       ext: str = ".png", size: int = 12) -> Path:
    rng = np.random.RandomState(seed)
    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            tiny_image(i, rng, size).save(root / name / f"img{j}{ext}")
    return root


def make_split_folders(root: Path, splits=("train", "val", "test"), classes=("a", "b", "c"),
                       per_class: dict | None = None) -> Path:
    per_class = per_class or {"train": 10, "val": 3, "test": 3, "valid": 3, "validation": 3}
    for k, split in enumerate(splits):
        make_class_folders(root / split, classes, per_class.get(split, 3), seed=k)
    return root


def make_labels_csv(root: Path, classes=("0", "1", "2"), per_class: int = 10, header=("id", "label")) -> Path:
    rng = np.random.RandomState(1)
    images = root / "images"
    images.mkdir(parents=True)
    rows, n = [], 0
    for i, name in enumerate(classes):
        for _ in range(per_class):
            n += 1
            ext = [".png", ".jpg", ".JPG"][n % 3]
            tiny_image(i, rng).save(images / f"{n}{ext}", format="PNG" if ext == ".png" else "JPEG")
            rows.append((str(n), name))
    csv_path = root / "train.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return csv_path


FAST = dict(model="cnn", model_args={"width": 8, "depth": 2}, img_size=8, epochs=2, batch_size=8,
            tensorboard=False, verbose=False, workers=1, evaluate=False)


# two-level labels: DATA/<coarse>/<fine>/*
TREE = {"animal": ["cat", "dog"], "plant": ["fern", "moss", "oak"]}


def make_tree(root, per_class=12, splits=None):
    rng = np.random.RandomState(0)
    k = 0
    for coarse, fines in TREE.items():
        for fine in fines:
            for split in (splits or [None]):
                folder = root / (split or "") / coarse / fine
                folder.mkdir(parents=True, exist_ok=True)
                for j in range(per_class if split in (None, "train") else 4):
                    tiny_image(k, rng).save(folder / f"{fine}{j}.png")
            k += 1
    return root


def assert_same_answers(got: list, want: list, atol: float = 1e-5) -> None:
    """Two lists of top-k answers agree: the same labels in the same order, probabilities within atol. Answers
    computed in different batch sizes, runtimes or processes differ in the last bits (batched float kernels
    differ across CPUs: 0.06505154818 vs 0.06505153328 on an Intel Xeon), so never compare them bitwise."""
    import numpy as np
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert [t["label"] for t in a] == [t["label"] for t in b]
        assert np.allclose([t["probability"] for t in a], [t["probability"] for t in b], atol=atol, rtol=0)


def make_tagged_folder(root, n=90, seed=0):
    """16 px images whose tags are visible: a red image, a green vertical stripe, a blue centre dot."""
    rng = np.random.RandomState(seed)
    (root / "data").mkdir(parents=True)
    rows = ["id,tags"]
    for i in range(n):
        img = (40 + rng.randint(0, 30, (16, 16, 3))).astype(np.uint8)
        tags = []
        if rng.rand() < 0.5:
            img[..., 0], tags = 220, tags + ["red"]
        if rng.rand() < 0.4:
            img[:, 6:9, 1], tags = 250, tags + ["stripe"]
        if rng.rand() < 0.3:
            img[6:10, 6:10, 2], tags = 255, tags + ["dot"]
        Image.fromarray(img).save(root / "data" / f"im{i}.png")
        rows.append(f"im{i},\"{';'.join(tags)}\"")
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    return root / "data", root / "tags.csv"


def png_bytes(label=0, size=12) -> bytes:
    """A tiny PNG of class `label` (tiny_image), as an upload's bytes."""
    import io
    buf = io.BytesIO()
    tiny_image(label, np.random.RandomState(label), size).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app, **config):
    """A real uvicorn server for `app` on a free 127.0.0.1 port, in a thread; yields its base URL."""
    import threading
    import time
    import uvicorn
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **{"log_level": "warning", **config}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def local_client(app, **options):
    """A TestClient that reaches the service as a browser on this machine does (Host 127.0.0.1: the service
    answers only the names it is reached by; TestClient's default Host, "testserver", is refused)."""
    from fastapi.testclient import TestClient
    return TestClient(app, base_url="http://127.0.0.1", **options)


def make_numbered_folder(root, n=120, seed=0, size=16, split_column=False):
    """16 px images, each labelled with a number it shows: the share of the image a bright square covers, times
    100 (with noise), so a small network learns it in a few epochs. Returns (data folder, labels CSV with columns
    file,target[,split]); with split_column, the first 70% of the files train, the next 15% validate, the rest test
    (a split by order, as frames of one camera must be)."""
    rng = np.random.RandomState(seed)
    data = Path(root) / "images"
    data.mkdir(parents=True)
    rows = []
    for i in range(n):
        side = int(rng.randint(2, size + 1))
        pixels = rng.normal(40, 10, (size, size, 3))
        top, left = rng.randint(0, size - side + 1, 2)
        pixels[top:top + side, left:left + side] = rng.normal(220, 10, 3)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(data / f"f{i:04d}.png")
        row = [f"f{i:04d}", f"{100 * side * side / size ** 2:.2f}"]
        if split_column:
            row.append("train" if i < 0.7 * n else "val" if i < 0.85 * n else "test")
        rows.append(row)
    labels = Path(root) / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "target"] + (["split"] if split_column else []))
        writer.writerows(rows)
    return data, labels


def tar_header(name: bytes, size: int, kind: bytes) -> bytes:
    """One ustar header block with a right checksum: what a crafted shard holds (a pax header claiming any size,
    a member cut short). Used by tests/data/test_shards.py and bench/bad_shards_memory.py."""
    block = bytearray(512)
    block[:len(name)] = name
    block[100:108], block[108:116], block[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
    block[124:136] = f"{size:011o}\0".encode()
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:263], block[263:265] = b"ustar\0", b"00"
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


# Chromium for the end-to-end tests in a real browser (the upload page's, the workbench's): Debian's, installed by
# `make test` when it may; without it those tests are skipped with the command that enables them, and in CI
# (IMGCLASS_REQUIRE_BROWSER=1) a missing browser fails.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ENABLE_CHROMIUM = "sudo apt-get install chromium (or run `make test` as root)"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def need_chromium() -> None:
    import os
    import pytest
    if CHROMIUM is None:
        if os.environ.get("IMGCLASS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"Chromium is required here (IMGCLASS_REQUIRE_BROWSER=1) and not installed: {ENABLE_CHROMIUM}")
        pytest.skip(f"Chromium is not installed; {ENABLE_CHROMIUM} enables this test")
