"""OpenVINO (issue 30): `export --format openvino` keeps the export contract with its parity line, loads in
OpenVINO's runtime, and `--runtime openvino` answers as PyTorch does."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import imgclass
from imgclass.cli import main
from imgclass.core.errors import UserError
from imgclass.models.modelfile import SOURCE_KEY, file_sha256, ir_metadata, read_ir_header
from imgclass.inference.predictor import Predictor

ov = pytest.importorskip("openvino", reason="the openvino extra (pip install 'imgclass[openvino]')")


def parity_of(printed: str) -> float:
    return float(printed.split("max |probability difference| ")[1].split(")")[0])


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ov") / "model_openvino"
    path, diff = imgclass.export(trained_run, "openvino", out).path, None
    return path


def test_export_prints_parity_and_carries_the_header(trained_run, tmp_path, capsys):
    out = tmp_path / "m_openvino"
    assert main(["export", str(trained_run), "--format", "openvino", "--out", str(out)]) == 0
    assert parity_of(capsys.readouterr().out) <= 1e-4
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml"]
    predictor = Predictor.load(trained_run, "cpu")
    assert read_ir_header(out) == predictor.header                   # the model file's header, whole
    assert ir_metadata(out, SOURCE_KEY) == file_sha256(predictor.path)
    model = ov.Core().read_model(str(out / "model.xml"))               # OpenVINO's own reader
    assert model.input(0).get_any_name() == "pixels" and model.output(0).get_any_name() == "probabilities"
    assert model.input(0).get_partial_shape()[0].is_dynamic              # any batch size


def test_the_export_runs_in_openvino_like_pytorch(trained_run, exported):
    predictor = Predictor.load(trained_run, "cpu")
    size = predictor.pre.img_size
    x = torch.from_numpy(np.random.RandomState(1).randint(0, 256, (5, 3, size, size), dtype=np.uint8))
    compiled = ov.Core().compile_model(str(exported / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.asarray(compiled(x.float().numpy())[0])
    np.testing.assert_allclose(got, predictor.probabilities(x).numpy(), atol=1e-4)
    loaded = Predictor.load(exported, "cpu")                             # the folder is a model too
    assert loaded.model is None and loaded.engine.runtime == "openvino" and loaded.classes == predictor.classes
    np.testing.assert_allclose(loaded.probabilities(x).numpy(), got, atol=1e-6)


def test_predict_runtime_openvino_equals_torch(trained_run, tmp_path, capsys):
    rng = np.random.RandomState(0)
    for i in range(4):
        Image.fromarray(rng.randint(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    Image.new("RGB", (1, 1)).save(tmp_path / "tiny.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    answers = {}
    for runtime in ("torch", "openvino"):
        assert main(["predict", str(trained_run), str(tmp_path), "--runtime", runtime, "--precision", "float32",
                     "--format", "json", "--top-k", "3"]) == 0
        answers[runtime] = json.loads(capsys.readouterr().out)
    assert [a["image"] for a in answers["openvino"]] == [a["image"] for a in answers["torch"]]
    for want, got in zip(answers["torch"], answers["openvino"]):
        assert ("error" in want) == ("error" in got)                     # the unreadable file fails alike
        if "error" in want:
            continue
        assert [t["label"] for t in got["top_k"]] == [t["label"] for t in want["top_k"]]
        np.testing.assert_allclose([t["probability"] for t in got["top_k"]],
                                   [t["probability"] for t in want["top_k"]], atol=1e-4)


def test_half_weights_halve_the_file_within_the_looser_tolerance(trained_run, tmp_path):
    full = imgclass.export(trained_run, "openvino", tmp_path / "f32")
    half = imgclass.export(trained_run, "openvino", tmp_path / "f16", half=True)
    assert half.parity <= 0.01
    assert (tmp_path / "f16" / "model.bin").stat().st_size < 0.6 * (tmp_path / "f32" / "model.bin").stat().st_size
    assert full.parity <= 1e-4


def test_an_export_runs_in_its_own_runtime_only(exported, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(UserError, match="OpenVINO export: it runs in OpenVINO"):
        imgclass.predict(exported, tmp_path / "a.png", runtime="torch")
    with pytest.raises(UserError, match="heatmaps need the PyTorch model file.*OpenVINO export"):
        imgclass.explain(exported, [tmp_path / "a.png"], out=tmp_path / "x")


def test_an_existing_folder_is_never_overwritten(trained_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="not empty"):
        imgclass.export(trained_run, "openvino", out)
    assert (out / "mine.txt").read_text() == "keep" and sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".building")]


def test_a_missing_extra_is_one_line_naming_it(trained_run, tmp_path, monkeypatch, capsys):
    import importlib
    real = importlib.import_module

    def no_openvino(name, *args):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *args)
    monkeypatch.setattr(importlib, "import_module", no_openvino)
    assert main(["export", str(trained_run), "--format", "openvino", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'imgclass[openvino]'" in err and len(err.splitlines()) == 1


def test_serve_evaluate_and_submit_run_openvino_like_torch(trained_run, tmp_path):
    from helpers import local_client, png_bytes
    from imgclass.serving.app import create_app
    blob = png_bytes(0)
    answers = {}
    for runtime in ("torch", "openvino"):
        app = local_client(create_app(trained_run, runtime=runtime, precision="float32"))
        answers[runtime] = app.post("/predict", files={"file": ("x.png", blob, "image/png")}).json()
        assert app.get("/info").json()["runtime"] == runtime
    assert [t["label"] for t in answers["openvino"]["top_k"]] == [t["label"] for t in answers["torch"]["top_k"]]
    np.testing.assert_allclose([t["probability"] for t in answers["openvino"]["top_k"]],
                               [t["probability"] for t in answers["torch"]["top_k"]], atol=1e-4)
    metrics = {r: imgclass.evaluate(trained_run, split="test", runtime=r, precision="float32",
                                    out=tmp_path / r).metrics for r in ("torch", "openvino")}
    # the same answers up to float rounding: at most one near-tie image of the small test split may flip
    assert metrics["openvino"]["accuracy"] == pytest.approx(metrics["torch"]["accuracy"], abs=0.2)
    assert metrics["openvino"]["log_loss"] == pytest.approx(metrics["torch"]["log_loss"], abs=1e-4)
