"""`imgclass demo`: scikit-learn's 1,797 handwritten digits (8x8) written as a folder of
PNGs, then trained and evaluated through the normal path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..core.rundir import RunDir
from .run import Run, train

# The demo settings, chosen so the demo finishes in well under 2 minutes on 2 CPU cores
# with test accuracy >= 95% (measured: see docs/getting-started.md).
DEMO_OPTIONS = dict(model="cnn", img_size=16, epochs=12, batch_size=64, augment="light", hflip=False,
                    resize="stretch", seed=101)


def write_digits(folder: str | Path) -> Path:
    """Write the digits as DATA/<digit>/<index>.png (8-bit grayscale); reuses a complete folder."""
    from sklearn.datasets import load_digits
    folder = Path(folder)
    digits = load_digits()
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.png")) == len(digits.target):
        return folder
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        path = folder / str(label) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (img * (255.0 / 16.0)).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(path)
    return folder


def run_demo(out: str | Path | None = None, data_dir: str | Path = "demo-data/digits") -> Run:
    data = write_digits(data_dir)
    out = Path(out) if out else RunDir.claim(None, prefix="demo").path
    return train(data, out=str(out), **DEMO_OPTIONS)
