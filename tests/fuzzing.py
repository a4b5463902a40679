"""Hypothesis strategies for fuzzing: random bytes, and valid small images of every common format with
bytes overwritten, inserted or cut off (used by tests/data/test_fuzz.py and tests/serving/test_fuzz.py)."""
import io

import numpy as np
from hypothesis import strategies as st
from PIL import Image


def _seed_images() -> list[bytes]:
    """Small valid files in every format imgclass decodes (data/defaults.py: IMAGE_FORMATS), in the modes users
    send: the starting points of mutations."""
    rng = np.random.RandomState(0)
    rgb = Image.fromarray(rng.randint(0, 255, (9, 7, 3), dtype=np.uint8))
    out = []
    for fmt, img in [("PNG", rgb), ("JPEG", rgb), ("GIF", rgb.convert("P")), ("BMP", rgb), ("TIFF", rgb),
                     ("WEBP", rgb), ("PNG", rgb.convert("I;16")), ("PNG", rgb.convert("LA")),
                     ("TIFF", rgb.convert("F"))]:
        buf = io.BytesIO()
        img.save(buf, fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


@st.composite
def mutated(draw) -> bytes:
    """A seed image with bytes overwritten, inserted or cut off: headers that lie, broken chunks, truncation."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["set", "insert", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[pos:]
    return bytes(data)


ANY_BYTES = st.one_of(st.binary(max_size=2048), mutated())
