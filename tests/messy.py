"""A messy folder: every kind of file real datasets contain, planted on purpose."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import tiny_image


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header claiming width x height pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


# file name -> expected reason pattern for the unusable ones
BAD = {
    "cat/zero.jpg": "empty file",
    "cat/page.jpg": "not an image",
    "dog/truncated.jpg": "truncated|cannot decode",
    "dog/bomb.png": "decompression bomb",
}
# odd but valid images that must be used
ODD = ["cat/cmyk.jpg", "cat/rgba.png", "cat/la.png", "cat/palette.gif", "cat/gray16.png", "dog/png_named.jpg",
       "dog/rotated.jpg", "dog/one_pixel.png", "dog/wide.png", "dog/bmp.BMP", "dog/webp.webp", "dog/tiff.TIFF",
       "cat/UPPER.JPG"]
IGNORED = ["train/cat/.DS_Store", "train/dog/Thumbs.db", "notes.txt"]  # relative to the data root


def make_messy(root: Path, per_class: int = 10) -> Path:
    rng = np.random.RandomState(0)
    for split, n in (("train", per_class), ("test", 4)):
        for i, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for j in range(n):
                tiny_image(i, rng, size=24).save(root / split / cls / f"{split}{j}.png")
    t = root / "train"
    (t / "cat" / "zero.jpg").write_bytes(b"")
    (t / "cat" / "page.jpg").write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    buf = io.BytesIO()
    tiny_image(1, rng, size=64).save(buf, "JPEG")
    (t / "dog" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (t / "dog" / "bomb.png").write_bytes(png_bomb())
    tiny_image(0, rng, 24).convert("CMYK").save(t / "cat" / "cmyk.jpg")
    tiny_image(0, rng, 24).convert("RGBA").save(t / "cat" / "rgba.png")
    tiny_image(0, rng, 24).convert("LA").save(t / "cat" / "la.png")
    tiny_image(0, rng, 24).convert("P").save(t / "cat" / "palette.gif")
    Image.fromarray((np.asarray(tiny_image(0, rng, 24).convert("L")).astype(np.uint16) * 257)).save(t / "cat" / "gray16.png")
    tiny_image(1, rng, 24).save(t / "dog" / "png_named.jpg", format="PNG")
    img = tiny_image(1, rng, 24).resize((30, 20))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(t / "dog" / "rotated.jpg", exif=exif.tobytes())
    tiny_image(1, rng, 1).save(t / "dog" / "one_pixel.png")
    tiny_image(1, rng, 24).resize((400, 2)).save(t / "dog" / "wide.png")
    tiny_image(1, rng, 24).save(t / "dog" / "bmp.BMP", format="BMP")
    tiny_image(1, rng, 24).save(t / "dog" / "webp.webp", format="WEBP")
    tiny_image(1, rng, 24).save(t / "dog" / "tiff.TIFF", format="TIFF")
    tiny_image(0, rng, 24).save(t / "cat" / "UPPER.JPG", format="JPEG")
    (t / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (t / "dog" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "notes.txt").write_text("collected in 2024")
    # leakage: an exact copy of a train image in test, and a near copy (one pixel changed)
    (root / "test" / "cat" / "leak_exact.png").write_bytes((t / "cat" / "train0.png").read_bytes())
    near = np.asarray(Image.open(t / "dog" / "train1.png")).copy()
    near[0, 0] = 255 - near[0, 0]
    Image.fromarray(near).save(root / "test" / "dog" / "leak_near.png")
    return root
