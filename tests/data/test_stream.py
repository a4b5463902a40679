"""Streaming (datasets whose cache would not fit on disk): the same images, decoded on demand."""
import pytest
import torch

from imgclass.data.images import load_split
from imgclass.data.preprocess import Preprocessing
from imgclass.data.stream import stream_split
from imgclass.core.errors import DataError

from helpers import make_class_folders


def rows_of():
    return [(f"{c}/img{j}.png", i) for i, c in enumerate(("cat", "dog", "fish")) for j in range(6)]


def test_streamed_split_equals_decoded_split(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=6)
    (root / "dog" / "img2.png").write_text("broken")
    pre = Preprocessing(img_size=8)
    direct = load_split(root, rows_of(), pre)
    streamed = stream_split(root, rows_of(), pre, workers=2)
    assert streamed.bad == direct.bad and streamed.paths == direct.paths
    assert torch.equal(streamed.labels, direct.labels)
    images = streamed.images
    assert len(images) == 17 and images.shape == (17, 3, 8, 8)
    assert torch.equal(images[:], direct.images) and torch.equal(images[3:9], direct.images[3:9])
    idx = torch.tensor([16, 0, 5, 5])
    assert torch.equal(images[idx], direct.images[idx]) and torch.equal(images[4], direct.images[4])
    # a whole epoch of batches, decoded ahead in two worker processes, arrives in order
    chunks = list(torch.randperm(17, generator=torch.Generator().manual_seed(0)).split(5))
    batches = list(images.batches(chunks))
    assert len(batches) == len(chunks)
    assert all(torch.equal(b, direct.images[c]) for b, c in zip(batches, chunks))


def test_file_broken_during_the_run_is_a_clear_error(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=6)
    streamed = stream_split(root, rows_of(), Preprocessing(img_size=8))
    (root / "cat" / "img1.png").write_text("broken")
    with pytest.raises(DataError, match="was the folder changed during the run"):
        streamed.images[:4]
