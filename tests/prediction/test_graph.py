import json

import numpy as np
import pytest
import torch

import imgclass
from imgclass.cli import main
from imgclass.models.modelfile import read_onnx_header
from imgclass.models.header import ModelHeader

from helpers import FAST, make_class_folders


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """The default fast model, with flip-and-translate TTA in its file."""
    root = tmp_path_factory.mktemp("exp")
    data = make_class_folders(root / "data", per_class=8)
    return imgclass.train(data, out=str(root / "run"), **dict(FAST, model="fast", model_args={"width": 8},
                                                             img_size=16, tta="flip_translate", evaluate=True))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity_and_metadata(fast_run, tmp_path, fmt, capsys):
    out = tmp_path / f"m.{fmt}"
    assert main(["export", str(fast_run.dir), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    diff = float(printed.split("max |probability difference| ")[1].split(")")[0])
    assert diff <= 1e-4 and out.is_file()
    predictor = imgclass.load(fast_run.dir, device="cpu")
    x = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)    # not the batch size exported with
    expected = predictor.probabilities(x).numpy()
    if fmt == "onnx":
        import onnxruntime as ort
        header = read_onnx_header(out)
        got = ort.InferenceSession(str(out)).run(None, {"pixels": x.float().numpy()})[0]   # another batch size
    else:
        extra = {"imgclass.json": ""}
        loaded = torch.jit.load(str(out), _extra_files=extra)
        header = ModelHeader.from_json(extra["imgclass.json"], out)
        got = loaded(x.float()).detach().numpy()
    assert header == predictor.header                                    # the model file's header, whole
    assert header.tta == "flip_translate"
    assert header.temperature == predictor.temperature != 1.0           # calibrated, in the export too
    np.testing.assert_allclose(got, expected, atol=1e-4)
    one = x[:1].float()   # batch 1 too
    got1 = ort.InferenceSession(str(out)).run(None, {"pixels": one.numpy()})[0] if fmt == "onnx" else \
        loaded(one).detach().numpy()
    np.testing.assert_allclose(got1, expected[:1], atol=1e-4)


def test_parity_failure_is_an_error(fast_run, tmp_path, monkeypatch, capsys):
    from imgclass.inference import graph
    monkeypatch.setattr(graph, "PARITY_TOLERANCE", -1.0)
    assert main(["export", str(fast_run.dir), "--format", "torchscript", "--out", str(tmp_path / "x.pt")]) == 2
    assert "failed parity" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_a_failed_export_leaves_no_file_behind(trained_run, tmp_path, monkeypatch):
    """Any failure while exporting (here ONNX Runtime failing to load the written graph), not only a parity
    failure, leaves neither the target nor a temporary file."""
    import onnxruntime

    from imgclass.inference.graph import export_model

    def broken(*args, **kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr(onnxruntime, "InferenceSession", broken)
    with pytest.raises(OSError, match="No space"):
        export_model(trained_run, "onnx", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
