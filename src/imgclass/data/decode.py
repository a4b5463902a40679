"""Decode any image Pillow opens into an 8-bit RGB picture, the same way everywhere.

EXIF orientation is applied; alpha is composited on white; 16-bit and 32-bit
grayscale are scaled to 8 bits; CMYK, palette and 1-bit images are converted;
grayscale is replicated to three channels. Images whose header claims more than
``max_pixels`` are refused before any pixel is decoded (decompression bombs).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own warning threshold


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


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (used for files here, and for PIL images given directly)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img)  # the native type (2 or 4 bytes a pixel), no float64 copy of the whole image
        # 16-bit data is scaled by its nominal range; 32-bit/float by the observed maximum.
        top = 65535.0 if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255) else 255.0
        if mode == "F":
            top = max(float(arr.max(initial=1.0)), 1e-12)
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
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, check and convert one image to RGB. Raises ImageDecodeError with a reason.

    draft_size lets JPEGs decode at a reduced scale (Pillow's draft mode) when the
    target side is much smaller than the file, which is several times faster.
    """
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ImageDecodeError("empty file (0 bytes)")
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)) and Path(source).is_file() and Path(source).stat().st_size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        img = Image.open(source)
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (Pillow cannot identify it)") from None
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
        img.load()  # decode now so truncation errors surface here
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"decompression bomb refused: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the same for pixel data that breaks a decoder
        raise ImageDecodeError(_reason("cannot decode", exc)) from None


def _reason(what: str, exc: Exception) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if "truncat" in text.lower():
        return f"truncated image: {text}"
    return f"{what}: {text}" if isinstance(exc, OSError) else f"{what}: {type(exc).__name__}: {text}"


# Never let Pillow silently fill truncated files with grey: a truncated file is reported.
ImageFile.LOAD_TRUNCATED_IMAGES = False
