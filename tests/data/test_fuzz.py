"""Fuzzing the decoder: random and mutated image bytes either decode to an RGB image of the model's size
or raise ImageDecodeError with a reason, never anything else (issue 14)."""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402

from imgclass.data.decode import ImageDecodeError  # noqa: E402
from imgclass.data.preprocess import Preprocessing  # noqa: E402

from fuzzing import ANY_BYTES, SEEDS  # noqa: E402


def check_decodes_or_refuses(blob: bytes, pre: Preprocessing) -> str:
    try:
        arr = pre.load(blob)
    except ImageDecodeError as exc:
        assert str(exc)             # a reason for the user, never an empty message
        return "refused"
    assert arr.dtype == np.uint8 and arr.shape == (pre.img_size, pre.img_size, 3)
    return "decoded"


@given(ANY_BYTES)
def test_decoder_decodes_or_refuses_clearly(blob):
    check_decodes_or_refuses(blob, Preprocessing(img_size=16, max_pixels=1_000_000))


def test_the_seeds_decode():
    """The fuzz starts from valid files: each decodes (so mutations test real parsing paths)."""
    assert [check_decodes_or_refuses(b, Preprocessing(img_size=16)) for b in SEEDS] == ["decoded"] * len(SEEDS)
