"""int8 exports (issue 30): calibrated on the run's training images, scored against the float model on the
test split in the same run, refused beyond --max-accuracy-drop, the report in the file and on the command
line; the runtime choice runs an int8 file only when its check passed."""
import json

import numpy as np
import onnx
import pytest
from sklearn.metrics import accuracy_score

import imgclass
from imgclass.cli import main
from imgclass.core.errors import UserError
from imgclass.models.modelfile import INT8_KEY, export_metadata
from imgclass.inference import quantize
from imgclass.inference.engines import OnnxEngine
from imgclass.inference.predictor import Predictor
from imgclass.inference.quantize import Int8Report

# slow (calibration, and the test split scored twice: about 40 s), and kept out of the quick loop's one process:
# with ONNX Runtime's and NNCF's quantization loaded in it, a later test died by SIGSEGV as it started Chromium
# (`pytest -m "not slow"`, 2026-12-02, reproduced twice; without this file it passes). `make test` runs this file in
# a pytest process of its own.
pytestmark = pytest.mark.slow


def test_int8_onnx_reports_both_accuracies_measured_on_the_test_split(trained_run, tmp_path, capsys):
    out = tmp_path / "m.int8.onnx"
    assert main(["export", str(trained_run), "--quantize", "int8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "int8 (onnx): test accuracy" in printed and "MB ->" in printed and "images/s at batch 16 on" in printed
    report = Int8Report.from_json(export_metadata(out, INT8_KEY))
    assert report.passed and report.split == "test" and report.runtime == "onnx"
    assert report.int8_bytes < report.float_bytes
    # the stored accuracies are the test split's, recomputed here with scikit-learn
    predictor = Predictor.load(trained_run, "cpu")
    root, rows = quantize.run_split(predictor, predictor.path, "test")
    int8 = OnnxEngine(out, predictor.pre.img_size, precision="int8")
    float_answers, int8_answers, labels = [], [], []
    for images, batch_labels in quantize.decoded(predictor, root, rows):
        float_answers += predictor.probabilities(images).numpy().argmax(1).tolist()   # PyTorch, float32
        int8_answers += int8(images).numpy().argmax(1).tolist()
        labels += batch_labels
    assert report.images == len(labels) == len(rows)
    assert report.int8_score == pytest.approx(accuracy_score(labels, int8_answers))
    assert report.float_score == pytest.approx(accuracy_score(labels, float_answers))
    # a model that loads like any export, its precision stated
    loaded = Predictor.load(out, "cpu")
    assert loaded.engine.precision == "int8" and loaded.header == predictor.header


def test_the_probabilities_stay_float_after_the_head(trained_run, tmp_path):
    out, _ = quantize.export_int8(trained_run, "onnx", tmp_path / "q.onnx")
    graph = onnx.load(str(out)).graph
    last = [n for n in graph.node if graph.output[0].name in n.output][0]
    assert last.op_type not in ("DequantizeLinear", "QuantizeLinear")   # softmax computed in float
    predictor = Predictor.load(trained_run, "cpu")
    x = quantize.calibration_images(predictor, predictor.path, 8)
    probs = OnnxEngine(out, predictor.pre.img_size)(x).numpy()
    assert len(np.unique(np.round(probs * 255, 4) % 1)) > 1               # not in steps of 1/255
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def _worse(real, only_seven_bit: bool = False):
    """quantize_onnx, then the int8 graph's answers replaced by class 0 for every image: a quantization that lost
    the model's accuracy, to be refused (only_seven_bit: only the 7-bit candidate loses it)."""
    def worse(float_onnx, out, calibration, seven_bit=True):
        real(float_onnx, out, calibration, seven_bit)
        if only_seven_bit and not seven_bit:
            return
        model = onnx.load(str(out))
        output = model.graph.output[0].name
        n = 3
        onehot = onnx.helper.make_tensor("always_first", onnx.TensorProto.FLOAT, [1, n], [1.0] + [0.0] * (n - 1))
        model.graph.initializer.append(onehot)
        for node in model.graph.node:
            node.output[:] = [f"{o}_real" if o == output else o for o in node.output]
        zero = onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [], [0.0])
        model.graph.initializer.append(zero)
        model.graph.node.extend([onnx.helper.make_node("Mul", [f"{output}_real", "zero"], ["zeroed"]),
                                 onnx.helper.make_node("Add", ["zeroed", "always_first"], [output])])
        onnx.save(model, str(out))
    return worse


def test_an_int8_model_that_loses_accuracy_is_refused(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(quantize.IN_PROCESS_ENV, "1")  # the stand-in quantizer lives in this process
    monkeypatch.setattr(quantize, "quantize_onnx", _worse(quantize.quantize_onnx))
    out = tmp_path / "refused.onnx"
    assert main(["export", str(trained_run), "--quantize", "int8", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "int8 export refused: test accuracy fell by" in err and "--max-accuracy-drop 1" in err
    assert not out.exists() and not list(tmp_path.iterdir())             # nothing written, nothing left over
    # allowed a drop that large, the same model is written, and its report says how much it lost
    assert main(["export", str(trained_run), "--quantize", "int8", "--out", str(out),
                 "--max-accuracy-drop", "100"]) == 0
    report = Int8Report.from_json(export_metadata(out, INT8_KEY))
    assert report.drop > 1 and report.passed and report.max_drop == 100


def test_int8_openvino(trained_run, tmp_path):
    pytest.importorskip("nncf", reason="the openvino extra")
    exported = imgclass.export(trained_run, "openvino", tmp_path / "q", quantize="int8")
    report = exported.int8
    assert report.runtime == "openvino" and report.passed and report.images > 0
    assert Int8Report.from_json(export_metadata(tmp_path / "q", INT8_KEY)) == report
    assert Predictor.load(tmp_path / "q", "cpu").engine.precision == "int8"
    assert any("int8 (openvino)" in line for line in exported.lines())


def test_int8_needs_the_run_folder_and_fits_only_some_formats(trained_run, tmp_path):
    import shutil
    alone = tmp_path / "alone.safetensors"
    shutil.copy(trained_run / "model.safetensors", alone)
    with pytest.raises(UserError, match="not inside its run folder"):
        imgclass.export(alone, "onnx", tmp_path / "x.onnx", quantize="int8")
    with pytest.raises(UserError, match="--quantize int8 is for --format onnx, openvino, hub"):
        imgclass.export(trained_run, "tflite", tmp_path / "x.tflite", quantize="int8")
    with pytest.raises(UserError, match="--half is for"):
        imgclass.export(trained_run, "onnx", tmp_path / "x.onnx", half=True)


def test_auto_runs_int8_only_when_its_check_passed(trained_run, tmp_path, monkeypatch):
    from imgclass.inference import runtime as rt
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    monkeypatch.setenv(rt.RUNTIME_CACHE_ENV, str(cache))
    monkeypatch.setattr(rt, "INT8_KINDS", ("onnx int8",))
    monkeypatch.setattr(rt, "images_per_second", lambda e, _i, _s: 900.0 if e.precision == "int8" else 100.0)
    p = Predictor.load(trained_run, "cpu")
    assert "int8" not in rt.choose_runtime(p, "auto", images=None).note  # a service does not make them ...
    note = rt.choose_runtime(p, "auto", images=rt.AUTO_INT8_IMAGES).note  # ... a large job does
    assert note.startswith("runtime: onnx int8 (fastest measured")
    assert "onnx int8" in rt.choose_runtime(p, "auto", images=None).note  # and a service then uses it
    # the same model whose int8 lost its accuracy: refused, remembered, and never run
    monkeypatch.setenv(quantize.IN_PROCESS_ENV, "1")  # the stand-in quantizer lives in this process
    monkeypatch.setattr(quantize, "quantize_onnx", _worse(quantize.quantize_onnx))
    for folder in cache.iterdir():
        import shutil
        shutil.rmtree(folder)
    note = rt.choose_runtime(Predictor.load(trained_run, "cpu"), "auto", images=rt.AUTO_INT8_IMAGES).note
    assert "int8" not in note.split("images/s:")[1]
    saved = json.loads(next(cache.iterdir()).joinpath("runtime.json").read_text())
    assert "int8 export refused" in saved["int8_refused"]["onnx int8"]


def test_hub_with_int8_states_both_models_in_the_card(trained_run, tmp_path, capsys):
    from imgclass.models.modelfile import INT8_KEY, export_metadata
    from imgclass.inference.quantize import Int8Report
    out = tmp_path / "hub8"
    assert main(["export", str(trained_run), "--format", "hub", "--quantize", "int8", "--out", str(out)]) == 0
    assert "int8 (onnx): test accuracy" in capsys.readouterr().out
    report = Int8Report.from_json(export_metadata(out / "model.int8.onnx", INT8_KEY))
    card = (out / "README.md").read_text()
    assert "## int8 (model.int8.onnx)" in card and "`model.int8.onnx`" in card
    assert f"| float32 (model.onnx) | {report.float_score:.4f} | {report.float_bytes / 1e6:.1f} |" in card
    assert f"| int8 (model.int8.onnx) | {report.int8_score:.4f} | {report.int8_bytes / 1e6:.1f} |" in card
    assert f"Speeds measured on {report.cpu.split(' (')[0]}" in card          # the CPU named


def test_quantization_runs_in_a_child_process(trained_run, tmp_path):
    """issue 40, item 20: with NNCF's and ONNX Runtime's quantization loaded, a long process died by SIGSEGV later as
    it started a child process; the caller's process now never loads them (the work runs in a child of its own)."""
    import subprocess
    import sys
    code = (f"import sys; from imgclass.inference import quantize; "
            f"path, report = quantize.export_int8({str(trained_run)!r}, 'onnx', {str(tmp_path / 'q.onnx')!r}); "
            f"print(path.is_file(), report.passed, "
            f"sorted(m for m in sys.modules if m.startswith(('onnxruntime.quantization', 'nncf'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True True []"


def test_int8_weights_are_seven_bit_where_they_keep_the_accuracy(trained_run, tmp_path, monkeypatch):
    """issue 40, item 19: on x86 CPUs without VNNI, pairs of u8 x s8 products are summed into 16 bits and saturate
    with full-range weights (3.23 test points lost on an AMD EPYC without VNNI). 7-bit weights (-64..64, ONNX
    Runtime's reduce_range) cannot overflow a pair: 2 x 255 x 64 = 32,640 < 32,767, so they hold on every CPU; where
    7 bits fail the accuracy check, the 8-bit model is kept and its report says so."""
    import onnx
    from onnx import numpy_helper

    def int8_weights(path):
        graph = onnx.load(str(path)).graph
        return [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    out, report = quantize.export_int8(trained_run, "onnx", tmp_path / "q.onnx")
    weights = int8_weights(out)
    assert report.weight_bits == 7 and weights and all(w.min() >= -64 and w.max() <= 64 for w in weights)
    assert 2 * 255 * max(int(abs(w).max()) for w in weights) < 2**15
    monkeypatch.setenv(quantize.IN_PROCESS_ENV, "1")  # the stand-in quantizer lives in this process
    monkeypatch.setattr(quantize, "quantize_onnx", _worse(quantize.quantize_onnx, only_seven_bit=True))
    out, report = quantize.export_int8(trained_run, "onnx", tmp_path / "q8.onnx")
    assert report.weight_bits == 8 and report.passed and max(int(abs(w).max()) for w in int8_weights(out)) > 64
    assert "7-bit lost too much here" in report.lines()[-1]


def test_an_int8_file_checked_on_another_cpu_says_so(trained_run, tmp_path, imgclass_log):
    """issue 40, item 19: a model quantized and checked on one CPU kind (shared through a hub folder) ran on another
    without a word; loading it now says where its accuracy was checked, and auto declines such a cached file."""
    import onnx
    out, _ = quantize.export_int8(trained_run, "onnx", tmp_path / "q.onnx")
    model = onnx.load(str(out))
    for bits in (7, 8):  # 7-bit weights hold everywhere: said only of an 8-bit model checked on another CPU
        for prop in model.metadata_props:
            if prop.key == INT8_KEY:
                prop.value = json.dumps({**json.loads(prop.value), "weight_bits": bits,
                                         "cpu": "Another CPU (no VNNI, AMX or native bf16)"})
        onnx.save(model, str(out))
        imgclass_log.clear()
        Predictor.load(out, "cpu")
        assert any("checked on Another CPU" in m for _, m in imgclass_log) == (bits == 8)
