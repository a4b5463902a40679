import io

import numpy as np
import pytest
from PIL import Image

from imgclass.data.decode import ImageDecodeError, open_rgb
from imgclass.data.preprocess import Preprocessing


def save(img: Image.Image, path, fmt=None, **kw):
    img.save(path, format=fmt, **kw)
    return path


def test_rgba_composited_on_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    out = np.asarray(open_rgb(save(img, tmp_path / "a.png")))
    assert out.shape == (4, 4, 3) and (out == 255).all()


def test_la_half_transparent(tmp_path):
    img = Image.new("LA", (2, 2), (0, 128))
    out = np.asarray(open_rgb(save(img, tmp_path / "la.png")))
    assert abs(int(out[0, 0, 0]) - 127) <= 1  # black at alpha 0.5 over white


def test_16bit_scaled_down(tmp_path):
    arr = np.full((3, 3), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    arr[1, 1] = 32768
    img = Image.fromarray(arr)
    out = np.asarray(open_rgb(save(img, tmp_path / "g16.png")))
    assert out[0, 0, 0] == 0 and out[2, 2, 0] == 255 and 126 <= out[1, 1, 0] <= 129


def test_cmyk_palette_gray_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))  # red
    red = np.asarray(open_rgb(save(cmyk, tmp_path / "c.jpg", "JPEG"))).astype(int)[1, 1]
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    pal = Image.new("RGB", (3, 3), (0, 0, 255)).convert("P")
    assert tuple(np.asarray(open_rgb(save(pal, tmp_path / "p.gif")))[0, 0]) == (0, 0, 255)
    gray = Image.new("L", (3, 3), 77)
    assert tuple(np.asarray(open_rgb(save(gray, tmp_path / "g.bmp")))[0, 0]) == (77, 77, 77)


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (6, 2), (10, 10, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "r.jpg"
    img.save(path, exif=exif.tobytes())
    assert open_rgb(path).size == (2, 6)


@pytest.mark.parametrize("fmt,ext", [("WEBP", "webp"), ("TIFF", "TIF"), ("PNG", "JPG")])
def test_other_formats_and_misnamed(tmp_path, fmt, ext):
    img = Image.new("RGB", (5, 4), (1, 2, 3))
    assert open_rgb(save(img, tmp_path / f"x.{ext}", fmt)).size == (5, 4)


def test_errors_have_reasons(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "page.jpg").write_text("<html>404</html>")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:200])
    for name, reason in [("empty.jpg", "empty"), ("page.jpg", "not an image"), ("cut.jpg", "truncated|cannot")]:
        with pytest.raises(ImageDecodeError, match=reason):
            open_rgb(tmp_path / name)


def test_bomb_refused_from_header(tmp_path):
    path = save(Image.new("L", (200, 200)), tmp_path / "big.png")
    with pytest.raises(ImageDecodeError, match="decompression bomb.*40,000 pixels"):
        open_rgb(path, max_pixels=10_000)


@pytest.mark.parametrize("policy", ["crop", "pad", "stretch"])
def test_resize_policies(policy):
    img = Image.new("RGB", (40, 10), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 5, 10))  # a red band at the left edge
    out = Preprocessing(img_size=8, resize=policy).load(img)
    assert out.shape == (8, 8, 3)
    if policy == "crop":    # the centre crop drops the red band
        assert out[:, 0, 1].min() > 200
    if policy == "pad":     # long side fits: black bars top and bottom, content kept
        assert out[0].max() == 0 and out[4, 0, 1] < 60
    if policy == "stretch":
        assert out[4, 0, 1] < 60 and out[0, 0, 1] < 60


def test_16_bit_conversion_needs_no_whole_image_float_copy():
    """A 16-bit image converts band by band (issue 14, item 2): the numpy temporaries stay far below a
    float64 copy of the image, and the values are the rounded 0..255 scaling as before."""
    import tracemalloc
    import numpy as np
    from PIL import Image
    from imgclass.data.decode import to_rgb
    h, w = 2000, 1500
    ramp = (np.arange(h * w, dtype=np.uint32) % 65536).astype(np.uint16).reshape(h, w)
    img = Image.fromarray(ramp)                             # mode I;16
    assert img.mode.startswith("I;16")
    tracemalloc.start()
    rgb = to_rgb(img)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the native uint16 array, the uint8 result and its image, and a 1 MB band: under 6 bytes a pixel
    # (before: two whole-image float64 arrays, over 18 bytes a pixel)
    assert peak < 6 * h * w, peak
    expected = np.clip(ramp.astype(np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    got = np.asarray(rgb)
    assert rgb.mode == "RGB" and (got[..., 0] == expected).mean() > 0.9999   # float32 vs float64 ties at .5
    assert np.abs(got[..., 0].astype(int) - expected).max() <= 1


def _whole_image_rgb(img):
    """The conversion done on the whole image at once (as before banding), for reference."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(arr / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "CMYK"])
def test_banded_conversion_equals_the_whole_image_one(mode):
    """Images over BAND_PIXELS are converted a band of rows at a time (issue 27, item 8: a 30 MP RGBA PNG peaked
    at 573 MB); the pixels are the ones a whole-image conversion gives."""
    from imgclass.data.decode import BAND_PIXELS, to_rgb
    rng = np.random.RandomState(0)
    h, w = 3 * (BAND_PIXELS // 1000) // 2 + 7, 1000                     # 1.5 bands and a ragged last one
    if mode == "I;16":
        img = Image.fromarray(rng.randint(0, 65536, (h, w)).astype(np.uint16))
    elif mode == "P":
        img = Image.fromarray(rng.randint(0, 255, (h, w)).astype(np.uint8), "L").convert("P")
        img.info["transparency"] = 3
    else:
        bands = {"RGBA": 4, "LA": 2, "CMYK": 4}[mode]
        img = Image.fromarray(rng.randint(0, 256, (h, w, bands)).astype(np.uint8), mode)
    assert w * h > BAND_PIXELS
    assert np.array_equal(np.asarray(to_rgb(img)), np.asarray(_whole_image_rgb(img)))


def test_only_accepted_formats_and_a_memory_bound(tmp_path):
    from imgclass.data.decode import decode_bytes
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(buf, "PPM")
    with pytest.raises(ImageDecodeError, match="not an image of an accepted format"):  # issue 40, item 6: only
        open_rgb(buf.getvalue())                                              # IMAGE_FORMATS, whatever the name
    assert open_rgb(buf.getvalue(), formats=("PPM",)).size == (20, 20)
    png = io.BytesIO()
    Image.new("RGBA", (2000, 2000)).save(png, "PNG")
    assert decode_bytes(2000, 2000, "RGBA", False) > 32 * 2 ** 20
    with pytest.raises(ImageDecodeError, match="too large to decode"):
        open_rgb(png.getvalue(), max_bytes=32 * 2 ** 20)
    assert open_rgb(png.getvalue(), max_bytes=64 * 2 ** 20).size == (2000, 2000)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_30_megapixel_decode_stays_within_its_estimate(tmp_path, mode):
    """The peak memory of one decode (ru_maxrss of a fresh process) is within decode_bytes' estimate."""
    import subprocess
    import sys
    path = tmp_path / "big.png"
    Image.new(mode, (6000, 5000), (100, 100, 100, 255)[:len(mode)]).save(path)
    code = ("import resource, sys; from imgclass.data.decode import open_rgb, decode_bytes; "
            "data = open(sys.argv[1], 'rb').read(); base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "open_rgb(data, max_pixels=40_000_000); "
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024, "
            f"decode_bytes(6000, 5000, '{mode}', False))")
    peak, estimate = map(int, subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                                             check=True).stdout.split())
    assert peak <= estimate and peak < 300 * 2 ** 20, (peak, estimate)


def test_decodes_share_a_byte_budget(monkeypatch):
    """issue 40: four decode threads each holding a 48-megapixel picture took predict past 2 GB; decodes now
    reserve their bytes (decode_bytes and the resize copy) from one budget, and an image larger than the whole
    budget decodes alone."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from imgclass.data import decode as dec
    from imgclass.data.preprocess import Preprocessing
    budget = dec.DecodeBudget(dec.decode_bytes(600, 400, "RGB", False) + 3 * 600 * 400 + 10)
    monkeypatch.setattr(dec, "DECODE_BUDGET", budget)
    import imgclass.data.preprocess as pre_module
    monkeypatch.setattr(pre_module, "DECODE_BUDGET", budget)
    holders, most, lock = [0], [0], threading.Lock()
    real = dec._decoded

    def counting(img, oriented, reservation):
        out = real(img, oriented, reservation)  # taken its bytes, decoded: now it holds them
        with lock:
            holders[0] += 1
            most[0] = max(most[0], holders[0])
        import time
        time.sleep(0.02)
        with lock:
            holders[0] -= 1
        return out
    monkeypatch.setattr(dec, "_decoded", counting)
    buf = io.BytesIO()
    Image.new("RGB", (600, 400), (1, 2, 3)).save(buf, "PNG")
    pre = Preprocessing(img_size=32)
    with ThreadPoolExecutor(4) as pool:
        arrays = list(pool.map(pre.load, [buf.getvalue()] * 8))
    assert most[0] == 1 and budget.free == budget.total and all(a.shape == (32, 32, 3) for a in arrays)
    small = dec.DecodeBudget(10)
    with small.hold() as reservation:
        reservation.take(10**9)  # more than the whole budget: takes all of it, never waits for ever
        assert small.free == 0
        with pytest.raises(RuntimeError):
            reservation.take(1)
    assert small.free == 10
