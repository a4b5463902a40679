from pathlib import Path

import numpy as np
import pytest
import torch

import imgclass
from imgclass.training import config
from imgclass.data.images import load_split
from imgclass.data.split import read_splits
from imgclass.models.modelfile import load_model
from imgclass.models.inference import predict_logits

from helpers import tiny_image


def test_predict_matches_training_path(trained_run):
    """predict decodes and preprocesses exactly as training did: same probabilities on the test split."""
    predictor = imgclass.load(trained_run, device="cpu")
    data_root = Path(config.resolve(trained_run / "config.yaml").data)
    split = read_splits(trained_run / "splits.csv", data_root, predictor.classes, predictor.task.label_kind)
    tensors = load_split(split.root, split.items["test"], predictor.pre, workers=1)
    model, _ = load_model(trained_run)
    logits = predict_logits(model, tensors.images, predictor.pre, 64, torch.device("cpu"))
    expected = torch.softmax(logits / predictor.temperature, 1)       # at the model file's calibrated temperature
    probs, errors = predictor.predict_proba([split.root / p for p in tensors.paths])
    assert errors == [None] * len(errors)
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-6)


def test_top_k_and_errors(trained_run, tmp_path):
    rng = np.random.RandomState(3)
    good = tmp_path / "red.png"
    tiny_image(0, rng).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    results = imgclass.predict(trained_run, [good, bad], top_k=2)
    assert results[0]["image"] == str(good) and len(results[0]["top_k"]) == 2
    assert results[0]["top_k"][0]["label"] == "cat"
    probs = [t["probability"] for t in results[0]["top_k"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert results[1]["image"] == str(bad) and results[1]["error"].startswith("not an image of an accepted format")


def test_pil_and_bytes_inputs(trained_run, tmp_path):
    img = tiny_image(1, np.random.RandomState(4))
    path = tmp_path / "g.png"
    img.save(path)
    predictor = imgclass.load(trained_run)
    a = predictor.predict([img])[0]["top_k"]
    b = predictor.predict([path.read_bytes()])[0]["top_k"]
    c = predictor.predict([path])[0]["top_k"]
    assert a == b == c and a[0]["label"] == "dog"


def test_top_k_larger_than_classes(trained_run, tmp_path):
    tiny_image(2, np.random.RandomState(5)).save(tmp_path / "b.png")
    assert len(imgclass.predict(trained_run, [tmp_path / "b.png"], top_k=10)[0]["top_k"]) == 3


def test_api_predict_takes_one_path_or_one_image(trained_run, tmp_path):
    """A single str, Path or PIL image is one input (not a string iterated character by character)."""
    from PIL import Image
    import imgclass
    img = tmp_path / "one.png"
    Image.new("RGB", (12, 12), (220, 40, 40)).save(img)
    by_str = imgclass.predict(trained_run, str(img), top_k=2)
    by_path = imgclass.predict(trained_run, img, top_k=2)
    by_pil = imgclass.predict(trained_run, Image.open(img), top_k=2)
    assert len(by_str) == len(by_path) == len(by_pil) == 1
    assert by_str[0]["top_k"] == by_path[0]["top_k"] == by_pil[0]["top_k"]
    assert by_str == imgclass.predict(trained_run, [str(img)], top_k=2)


def test_the_api_refuses_what_the_command_line_refuses(trained_run):
    """issue 39: --top-k below 1 was refused by the command line only; imgclass.predict(top_k=0) silently answered
    one label. The check lives in the library now, and runs before any image is read."""
    from imgclass.core.errors import UserError
    with pytest.raises(UserError, match="--top-k must be at least 1"):
        imgclass.predict(trained_run, "no-such-image.png", top_k=0)
    with pytest.raises(UserError, match="one level"):
        imgclass.predict(trained_run, "no-such-image.png", level="coarse")
