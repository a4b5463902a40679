"""Shared helpers for the benchmarks: the CIFAR-10 copy and a description of the machine."""
from __future__ import annotations

import os
import platform
import tarfile
from pathlib import Path

import torch

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
BENCH_DIR = Path(os.environ.get("IMGCLASS_BENCH_DIR", Path.home() / ".cache" / "imgclass-bench"))


def cifar10() -> Path:
    """CIFAR-10 as JPEG class folders (train/, test/), extracted once outside the repository."""
    root = BENCH_DIR / "cifar10"
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        if not ARCHIVE.is_file():
            raise SystemExit(f"CIFAR-10 archive not found at {ARCHIVE}")
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(root, filter="data")
    return root


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; Python {platform.python_version()}")
