import json
import pickle

import pytest
import torch

from imgclass.errors import UserError
from imgclass.modelfile import load_model, read_header
from imgclass.prediction.predictor import Predictor


def test_round_trip_from_file_alone(trained_run, tmp_path):
    file = trained_run / "model.safetensors"
    copy = tmp_path / "elsewhere.safetensors"
    copy.write_bytes(file.read_bytes())  # the file alone, away from its run folder
    model, header = load_model(copy)
    best, _ = load_model(trained_run / "checkpoints" / "best.safetensors")
    for (k, a), b in zip(model.state_dict().items(), best.state_dict().values()):
        assert torch.equal(a, b), k
    assert header["classes"] == ["cat", "dog", "fish"]
    assert set(header["preprocessing"]) == {"img_size", "resize", "mean", "std", "max_pixels"}
    assert header["imgclass_version"] and "test" in header["metrics"]
    # the run folder and the file give the same predictions
    p1, p2 = Predictor.load(trained_run, "cpu"), Predictor.load(copy, "cpu")
    x = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(p1.probabilities(x), p2.probabilities(x))


def test_file_holds_no_pickle(trained_run):
    raw = (trained_run / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])      # safetensors: a JSON header, then raw tensor bytes
    assert json.loads(header["__metadata__"]["imgclass"])["format"] == "imgclass-model"
    assert pickle.PROTO not in raw[:2] and b"torch._utils" not in raw


def test_not_a_model_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable safetensors"):
        read_header(bad)
    with pytest.raises(UserError, match="model not found"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="no model in"):
        load_model(tmp_path)
