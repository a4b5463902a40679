"""Decode any image Pillow opens into an 8-bit RGB picture, the same way everywhere.

EXIF orientation is applied; alpha is composited on white; 16-bit and 32-bit
grayscale are scaled to 8 bits; CMYK, palette and 1-bit images are converted;
grayscale is replicated to three channels. Images whose header claims more than
``max_pixels`` are refused before any pixel is decoded (decompression bombs).
"""
from __future__ import annotations

import io
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .defaults import DEFAULT_MAX_PIXELS, IMAGE_FORMATS

ORIENTATION_TAG = 0x0112          # EXIF orientation: 1 (or none) needs no transposition


class ImageDecodeError(ValueError):
    """A file that cannot be used as an image; the message is the reason shown to the user."""


def _scaled_to_uint8(arr: np.ndarray, top: float, chunk_pixels: int = 1 << 18) -> np.ndarray:
    """round(arr / top * 255) clipped to 0..255 as uint8, a band of rows at a time: the float32
    temporaries stay near 1 MB whatever the image's size (a whole-image float64 copy of a 16-bit
    9400x9400 PNG, 172 KB on disk, was 0.7 GB)."""
    out = np.empty(arr.shape, dtype=np.uint8)
    rows = max(1, chunk_pixels // max(1, arr.shape[1] if arr.ndim > 1 else 1))
    for start in range(0, arr.shape[0], rows):
        band = arr[start:start + rows].astype(np.float32)
        band *= 255.0 / top
        band += 0.5
        np.clip(band, 0, 255, out=band)
        out[start:start + rows] = band  # truncation after +0.5: rounding, as before
    return out


# Converted a band of rows at a time, so a conversion's temporaries stay small whatever the image's size. Measured
# peak memory of one decode above the process's baseline (30-megapixel PNGs, ru_maxrss, machine A, 2026-12-01),
# before -> after banding and transposing only images whose EXIF asks for it: RGB 230 -> 120 MB, RGBA 573 ->
# 250 MB, 16-bit grey 259 -> 183 MB, palette with transparency 602 -> 165 MB (a JPEG, decoded at reduced
# scale in draft mode: 5 MB).
BAND_PIXELS = 1 << 20
# Bytes a pixel takes in Pillow's memory: 8-bit single-band modes one, 16-bit two, every other mode four (Pillow
# keeps RGB as RGBX).
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
BAND_TEMPORARIES = 20  # bytes a pixel of one band takes while converted (RGBA: crop, RGBA, white, composite, RGB)


def decode_bytes(width: int, height: int, mode: str, oriented: bool) -> int:
    """An upper bound on the memory one decode of this image takes at its peak: the decoded pixels (twice when its
    EXIF orientation asks for a transposed copy), the RGB result, 5% for the decoder's own buffers, and one band's
    conversion temporaries. Checked against measured peaks in tests/data/test_decode.py."""
    pixels = width * height
    decoded = MODE_BYTES.get(mode, 4) * (2 if oriented else 1)
    return int(pixels * (decoded + (0 if mode == "RGB" else 4)) * 1.05) + min(pixels, BAND_PIXELS) * BAND_TEMPORARIES


# Bytes that the decodes of one process may hold at once (every thread's decode_bytes, plus the copy a resize makes).
# Threads decode in parallel (predict's DECODE_WORKERS, check's one per core, the cache's pool): without a bound, a
# shard of 48-megapixel PNGs took 2.17 GB of peak RSS with four decode threads, where issue 40 asks under 2 GB
# (bench/bad_shards_memory.py, 2026-12-07); an image needing more than the whole budget decodes alone.
DECODE_BUDGET_BYTES = 512 * 2**20


class DecodeBudget:
    """A byte budget shared by the threads that decode (a semaphore weighted by bytes). Each decode takes its
    bytes once, before its pixels are decoded, and gives them back when its caller is done with the full-size
    picture; taking once per hold is what makes it free of deadlock."""

    def __init__(self, total: int):
        self.total = total
        self.free = total
        self._changed = threading.Condition()

    @contextmanager
    def hold(self) -> Iterator["Reservation"]:
        reservation = Reservation(self)
        try:
            yield reservation
        finally:
            if reservation.held:
                with self._changed:
                    self.free += reservation.held
                    self._changed.notify_all()

    def _take(self, n: int) -> int:
        n = min(n, self.total)
        with self._changed:
            self._changed.wait_for(lambda: self.free >= n)
            self.free -= n
        return n


class Reservation:
    """One decode's share of a DecodeBudget, taken once (take) and given back as its hold ends."""

    def __init__(self, budget: DecodeBudget):
        self.budget = budget
        self.held = 0

    def take(self, n: int) -> None:
        if self.held:
            raise RuntimeError("a reservation is taken once (a second take while holding could deadlock)")
        self.held = self.budget._take(n)


DECODE_BUDGET = DecodeBudget(DECODE_BUDGET_BYTES)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (used for files here, and for PIL images given directly), a band of rows at a
    time for large images (the result equals converting the whole image at once)."""
    if img.mode == "RGB":
        return img
    top = _scale_top(img)
    width, height = img.size
    if width * height <= BAND_PIXELS:
        return _converted(img, top)
    out = Image.new("RGB", img.size)
    rows = max(1, BAND_PIXELS // width)
    for start in range(0, height, rows):
        out.paste(_converted(img.crop((0, start, width, min(height, start + rows))), top), (0, start))
    return out


def _scale_top(img: Image.Image) -> float | None:
    """The value that maps to 255 for 16-bit, 32-bit and float images (None for the others): 16-bit data by its
    nominal range; 32-bit integers by 65535 when they exceed 255 (else 255); floats by their maximum (at least 1)."""
    mode = img.mode
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "I":
        return 65535.0 if img.getextrema()[1] > 255 else 255.0
    if mode == "F":
        return max(float(img.getextrema()[1]), 1.0)
    return None


def _converted(img: Image.Image, top: float | None) -> Image.Image:
    mode = img.mode
    if top is not None:
        arr = np.asarray(img)  # the native type (2 or 4 bytes a pixel), no float64 copy
        return Image.fromarray(_scaled_to_uint8(arr, top), mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def open_rgb(source: str | Path | bytes | BinaryIO, draft_size: int | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS, formats: tuple[str, ...] = IMAGE_FORMATS,
             max_bytes: int | None = None, reservation: Reservation | None = None) -> Image.Image:
    """Open, check and convert one image to RGB. Raises ImageDecodeError with a reason.

    draft_size lets JPEGs decode at a reduced scale (Pillow's draft mode) when the
    target side is much smaller than the file, which is several times faster. formats: the only Pillow formats
    opened (data/defaults.py's IMAGE_FORMATS, whatever the file's name); max_bytes: refuse an image whose decode would take
    more memory than this at its peak (decode_bytes), before decoding it. reservation: the caller's share of
    DECODE_BUDGET, held until it has resized the picture (without one, the budget is held for the decode alone).
    """
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ImageDecodeError("empty file (0 bytes)")
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)) and Path(source).is_file() and Path(source).stat().st_size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        img = Image.open(source, formats=formats)
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not an image of an accepted format ({', '.join(formats)})") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"decompression bomb refused: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's parsers raise OSError, ValueError, SyntaxError,
        # EOFError, struct.error... on malformed headers (found by tests/data/test_fuzz.py): one clear refusal
        raise ImageDecodeError(_reason("cannot open", exc)) from None
    try:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageDecodeError(f"decompression bomb refused: header claims {width}x{height} = "
                                   f"{width * height:,} pixels, over the limit of {max_pixels:,}")
        if width == 0 or height == 0:
            raise ImageDecodeError("image has zero width or height")
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        oriented = img.getexif().get(ORIENTATION_TAG, 1) not in (1, None)
        if max_bytes is not None and (need := decode_bytes(*img.size, img.mode, oriented)) > max_bytes:
            raise ImageDecodeError(f"image too large to decode here: {img.size[0]}x{img.size[1]} {img.mode} needs "
                                   f"about {need / 2 ** 20:,.0f} MB, over the limit of {max_bytes / 2 ** 20:,.0f} MB")
        if reservation is None:
            with DECODE_BUDGET.hold() as own:
                return _decoded(img, oriented, own)
        return _decoded(img, oriented, reservation)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"decompression bomb refused: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the same for pixel data that breaks a decoder
        raise ImageDecodeError(_reason("cannot decode", exc)) from None


def _decoded(img: Image.Image, oriented: bool, reservation: Reservation) -> Image.Image:
    """The pixels of an opened image as RGB, once its bytes are reserved: decode_bytes, and a copy of the picture
    for the caller's resize (ImageOps.fit crops a copy at most the image's size)."""
    width, height = img.size
    reservation.take(decode_bytes(width, height, img.mode, oriented) + 3 * width * height)
    img.load()  # decode now so truncation errors surface here
    if oriented:
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def _reason(what: str, exc: Exception) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if "truncat" in text.lower():
        return f"truncated image: {text}"
    return f"{what}: {text}" if isinstance(exc, OSError) else f"{what}: {type(exc).__name__}: {text}"


# Never let Pillow silently fill truncated files with grey: a truncated file is reported.
ImageFile.LOAD_TRUNCATED_IMAGES = False
