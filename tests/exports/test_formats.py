"""Device and fleet formats (issue 30): TFLite runs in LiteRT with its parity line, Core ML's converted spec is
checked, and a Triton repository validates against Triton's own config schema."""
import numpy as np
import onnx
import pytest
import torch

import imgclass
from imgclass.cli import main
from imgclass.core.errors import UserError
from imgclass.inference.predictor import Predictor


def parity_of(printed: str) -> float:
    return float(printed.split("max |probability difference| ")[1].split(")")[0])


def random_images(predictor, n, seed=3):
    size = predictor.pre.img_size
    return torch.from_numpy(np.random.RandomState(seed).randint(0, 256, (n, 3, size, size), dtype=np.uint8))


@pytest.mark.slow
def test_tflite_runs_in_litert_like_pytorch(trained_run, tmp_path, capsys):
    import importlib.util
    import sys
    # found, not imported: importing onnx2tf imports TensorFlow, which then stayed in the test process (and the
    # Core ML test below, which asserts TensorFlow's absence, caught it); the export runs onnx2tf in a child process
    if importlib.util.find_spec("ai_edge_litert") is None or importlib.util.find_spec("onnx2tf") is None:
        pytest.skip("the tflite extra")
    from imgclass.exports.tflite import read_tflite_header, run_tflite
    out = tmp_path / "m.tflite"
    assert main(["export", str(trained_run), "--format", "tflite", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert parity_of(printed) <= 1e-4 and "NHWC" in printed
    predictor = Predictor.load(trained_run, "cpu")
    assert read_tflite_header(out) == predictor.header
    x = random_images(predictor, 5)                                     # another batch size than the check's
    np.testing.assert_allclose(run_tflite(out, x), predictor.probabilities(x).numpy(), atol=1e-4)
    from ai_edge_litert.interpreter import Interpreter                  # LiteRT's own view of the input
    details = Interpreter(model_path=str(out)).get_input_details()[0]
    size = predictor.pre.img_size
    assert list(details["shape_signature"]) == [-1, size, size, 3]
    assert "tensorflow" not in sys.modules                              # LiteRT runs without TensorFlow


def test_coreml_spec_is_checked_and_says_parity_needs_macos(trained_run, tmp_path, capsys):
    import importlib.util
    import sys
    if importlib.util.find_spec("coremltools") is None:
        pytest.skip("the coreml extra")
    assert "tensorflow" not in sys.modules
    from imgclass.exports.coreml import _coremltools, spec_class_labels
    # coremltools imports TensorFlow whenever it is installed; imported as the export imports it (TensorFlow hidden),
    # TensorFlow stays out of this process. (This test once imported coremltools itself, plainly: TensorFlow then
    # stayed loaded in the test process, and a later test died by SIGSEGV as it started Chromium.)
    ct = _coremltools()
    out = tmp_path / "m.mlpackage"
    assert main(["export", str(trained_run), "--format", "coreml", "--out", str(out)]) == 0
    assert "tensorflow" not in sys.modules
    printed = capsys.readouterr().out
    assert "Core ML spec checked" in printed
    if sys.platform != "darwin":
        assert "numerical parity needs macOS" in printed
    spec = ct.utils.load_spec(str(out))                                # read back by coremltools itself
    predictor = Predictor.load(trained_run, "cpu")
    size = predictor.pre.img_size
    assert [i.name for i in spec.description.input] == ["pixels"]
    assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 3, size, size]
    assert spec_class_labels(spec) == list(predictor.classes)
    assert spec.description.predictedFeatureName == "classLabel"
    assert spec.description.metadata.userDefined["imgclass"] == predictor.header.to_json()
    assert "tensorflow" not in sys.modules                             # nor by reading the spec back


def test_triton_repository_validates(trained_run, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc", reason="the triton extra")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2
    repo = tmp_path / "repo"
    assert main(["export", str(trained_run), "--format", "triton", "--out", str(repo), "--name", "shapes"]) == 0
    printed = capsys.readouterr().out
    assert parity_of(printed) <= 1e-4 and "parsed by Triton's ModelConfig" in printed
    predictor = Predictor.load(trained_run, "cpu")
    size, classes = predictor.pre.img_size, list(predictor.classes)
    folder = repo / "shapes"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt", "imgclass.json", "labels.txt"]
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "shapes" and config.backend == "onnxruntime" and config.max_batch_size > 1
    assert config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("pixels", [3, size, size])]
    assert [(o.name, list(o.dims), o.label_filename) for o in config.output] == [
        ("probabilities", [len(classes)], "labels.txt")]
    assert (folder / "labels.txt").read_text().splitlines() == classes
    # the model file agrees with the config: Triton adds the batch dimension in front of dims
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    dims = [[d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in (graph.input[0], graph.output[0])]
    assert [graph.input[0].name, graph.output[0].name] == ["pixels", "probabilities"]
    assert isinstance(dims[0][0], str) and dims[0][1:] == [3, size, size] and dims[1][1:] == [len(classes)]
    from imgclass.models.header import ModelHeader
    assert ModelHeader.from_json((folder / "imgclass.json").read_text(), folder) == predictor.header


def test_triton_openvino_backend(trained_run, tmp_path):
    pytest.importorskip("openvino", reason="the openvino extra")
    exported = imgclass.export(trained_run, "triton", tmp_path / "repo", backend="openvino", name="m")
    assert sorted(p.name for p in (tmp_path / "repo" / "m" / "1").iterdir()) == ["model.bin", "model.xml"]
    assert 'backend: "openvino"' in (tmp_path / "repo" / "m" / "config.pbtxt").read_text()
    assert exported.parity <= 1e-4


def test_triton_refuses_a_bad_name_and_needs_a_folder(trained_run, tmp_path):
    with pytest.raises(UserError, match="Triton model name"):
        imgclass.export(trained_run, "triton", tmp_path / "r", name="a b/c")
    with pytest.raises(UserError, match="needs --out"):
        imgclass.export(trained_run, "triton")
    assert not (tmp_path / "r").exists()
