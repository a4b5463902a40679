import json
import pickle
from pathlib import Path

import pytest
import torch

from imgclass.core.errors import UserError
from imgclass.models.modelfile import load_model, read_header
from imgclass.inference.predictor import Predictor


def test_round_trip_from_file_alone(trained_run, tmp_path):
    file = trained_run / "model.safetensors"
    copy = tmp_path / "elsewhere.safetensors"
    copy.write_bytes(file.read_bytes())  # the file alone, away from its run folder
    model, header = load_model(copy)
    best, _ = load_model(trained_run / "checkpoints" / "best.safetensors")
    for (k, a), b in zip(model.state_dict().items(), best.state_dict().values()):
        assert torch.equal(a, b), k
    assert header.classes == ("cat", "dog", "fish")
    assert set(header.preprocessing.to_dict()) == {"img_size", "resize", "mean", "std", "max_pixels"}
    assert header.imgclass_version and "test" in header.metrics
    # the run folder and the file give the same predictions
    p1, p2 = Predictor.load(trained_run, "cpu"), Predictor.load(copy, "cpu")
    x = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(p1.probabilities(x), p2.probabilities(x))


def test_file_holds_no_pickle(trained_run):
    raw = (trained_run / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])      # safetensors: a JSON header, then raw tensor bytes
    assert json.loads(header["__metadata__"]["imgclass"])["format"] == "imgclass-model"
    # not a pickle stream (PROTO, then a protocol number: the header's length may begin with 0x80 by chance, as
    # 0x0f80 did once) nor torch's zip, and the JSON header right after its 8-byte length
    assert not (raw[:1] == pickle.PROTO and raw[1] <= pickle.HIGHEST_PROTOCOL) and raw[:2] != b"PK"
    assert raw[8:9] == b"{" and b"torch._utils" not in raw


def test_not_a_model_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable safetensors"):
        read_header(bad)
    with pytest.raises(UserError, match="model not found"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="no model in"):
        load_model(tmp_path)


def _with_header(trained_run, tmp_path, change) -> Path:
    """A copy of the run's model file whose header was edited by change(header) (a crafted file)."""
    from safetensors.torch import load_file, save_file
    src = trained_run / "model.safetensors"
    header = read_header(src).to_dict()
    change(header)
    out = tmp_path / "crafted.safetensors"
    save_file(load_file(str(src)), str(out), metadata={"imgclass": json.dumps(header)})
    return out


@pytest.mark.parametrize("change,message", [
    (lambda h: h["arch"]["args"].update(checkpoint_path="/etc/passwd"), "checkpoint_path.*refused"),
    (lambda h: h["arch"]["args"].update(width={"nested": 1}), "must be a number"),
    (lambda h: h["arch"]["args"].update(no_such_arg=3), "no argument 'no_such_arg'.*takes"),
    (lambda h: h.update(arch="cnn"), "'arch' must name"),
    (lambda h: h.update(classes=[1, 2, 3]), "'classes'"),
    (lambda h: h["preprocessing"].update(std=[0, 1, 1]), "preprocessing"),
    (lambda h: h["preprocessing"].update(img_size="huge"), "preprocessing"),
    (lambda h: h.update(hierarchy={"strategy": "flat", "coarse_classes": ["a"], "parents": [0, 5, 0]}),
     "hierarchy"),
    # several tags: a per-tag calibration must be Platt's, with a positive scale per tag
    (lambda h: h.update(format_version=2, task={"name": "multi-label", "calibration": {
        "method": "platt", "scale": [-1.0] * len(h["classes"]), "shift": [0.0] * len(h["classes"])}}), "task.calibration.scale"),
    (lambda h: h.update(format_version=2, task={"name": "multi-label", "calibration": {
        "method": "platt", "scale": [1.0] * len(h["classes"]), "shift": [float("nan")] * len(h["classes"])}}),
     "task.calibration.shift"),
    (lambda h: h.update(format_version=2, task={"name": "multi-label", "calibration": {"method": "isotonic"}}),
     "Platt"),
])
def test_a_crafted_header_is_refused_before_anything_is_built(trained_run, tmp_path, change, message, monkeypatch):
    """issue 14, item 6: header arguments are checked before the model is built (timm's create_model
    would otherwise read any checkpoint_path a file names)."""
    from imgclass.models import registry
    built = []
    monkeypatch.setattr(registry, "get_spec", lambda name: built.append(name) or pytest.fail("built"))
    with pytest.raises(UserError, match=message):
        load_model(_with_header(trained_run, tmp_path, change))
    assert built == []


def test_zoo_models_refuse_loader_arguments():
    from imgclass.models import create_model
    with pytest.raises(UserError, match="checkpoint_path.*refused"):
        create_model("timm:resnet18", 3, checkpoint_path="x.pth")
    with pytest.raises(UserError, match="weights.*refused"):
        create_model("torchvision:resnet18", 3, weights="DEFAULT")
    with pytest.raises(UserError, match="does not accept"):  # the architecture's own check, as a clear error
        create_model("timm:resnet18", 3, no_such_arg=1)


def test_a_model_file_cannot_raise_the_pixel_limit(trained_run, tmp_path):
    from imgclass.data.decode import DEFAULT_MAX_PIXELS
    raised = _with_header(trained_run, tmp_path, lambda h: h["preprocessing"].update(max_pixels=10 ** 12))
    assert Predictor.load(raised, "cpu").pre.max_pixels == DEFAULT_MAX_PIXELS      # the guard stays on
    assert Predictor.load(raised, "cpu", max_pixels=5000).pre.max_pixels == 5000  # the command's own limit
    lowered = tmp_path / "low"
    lowered.mkdir()
    low = _with_header(trained_run, lowered, lambda h: h["preprocessing"].update(max_pixels=100))
    assert Predictor.load(low, "cpu").pre.max_pixels == 100                        # a file may lower it
    result = Predictor.load(low, "cpu").predict([trained_run / "model.safetensors"])  # not even an image
    assert "error" in result[0]


def test_a_header_asking_for_a_huge_network_is_refused_without_building_it(tmp_path, monkeypatch):
    """issue 40, item 2: a 600-byte file whose header asked for an mlp of width 40,000 and depth 30 was built in full
    (about 190 GB) before any tensor shape was compared. It is now refused from shapes alone: the network is only
    ever built on the meta device (no memory). (Width 4,000 here: what the old code built stays affordable.)"""
    from safetensors.torch import save_file

    from imgclass.data.preprocess import Preprocessing
    from imgclass.models import registry
    from imgclass.models.header import Architecture
    from imgclass.models.modelfile import model_header, save_model
    arch = Architecture("mlp", {"width": 8, "depth": 1})
    small = tmp_path / "small.safetensors"
    save_model(small, registry.create_model("mlp", num_classes=2, width=8, depth=1),
               model_header(arch, ["a", "b"], Preprocessing(img_size=8)))
    header = read_header(small).to_dict()
    header["arch"]["args"] = {"width": 4000, "depth": 3}
    crafted = tmp_path / "crafted.safetensors"
    save_file({"x": torch.zeros(1)}, str(crafted), metadata={"imgclass": json.dumps(header)})
    assert crafted.stat().st_size < 2000
    from imgclass.models.tasks import base
    devices = []
    monkeypatch.setattr(base, "create_model", lambda *a, **k: devices.append(torch.empty(0).device.type)
                        or registry.create_model(*a, **k))
    with pytest.raises(UserError, match="tensors are not the file's"):
        load_model(crafted)
    assert devices == ["meta"]
    assert load_model(small)[0] is not None and devices == ["meta", "meta", "cpu"]
