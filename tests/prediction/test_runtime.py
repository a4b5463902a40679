"""The runtime choice (issues 19 and 25): stated, overridable, kept in a private per-user cache (never beside
the model); ONNX and bf16 answers within tolerance of float32 eager PyTorch; a graph planted beside a model
never runs."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclass.cli import main
from imgclass.core.errors import UserError
from imgclass.models.modelfile import SOURCE_KEY, file_sha256, onnx_metadata
from imgclass.inference import runtime as rt
from imgclass.inference.engines import OnnxEngine, TorchEngine
from imgclass.inference.predictor import Predictor


@pytest.fixture()
def model_file(trained_run, tmp_path, monkeypatch):
    """The shared run's model, copied, with a runtime cache of this test's own."""
    cache = tmp_path / "runtime-cache"
    cache.mkdir(mode=0o700)
    monkeypatch.setenv(rt.RUNTIME_CACHE_ENV, str(cache))
    target = tmp_path / "model.safetensors"
    shutil.copy(trained_run / "model.safetensors", target)
    return target


def cache_of(model_file) -> Path:
    return rt.runtime_cache_root() / file_sha256(model_file)


def choose(predictor, *args, **kwargs) -> str:
    """Choose and use the runtime, as the commands do; the note."""
    choice = rt.choose_runtime(predictor, *args, **kwargs)
    predictor.use(choice)
    return choice.note


def images(predictor, n=12, seed=0):
    size = predictor.pre.img_size
    return torch.from_numpy(np.random.RandomState(seed).randint(0, 256, (n, 3, size, size), dtype=np.uint8))


def reference(model_file, x):
    return Predictor.load(model_file, "cpu").probabilities(x)   # eager PyTorch, float32


def test_forced_torch_float32_is_the_reference(model_file, imgclass_log):
    p = Predictor.load(model_file, "cpu")
    note = choose(p, "torch", "float32", images=5)
    assert isinstance(p.engine, TorchEngine) and not p.engine.bf16
    assert note == "runtime: torch float32 (asked)" and ("INFO", note) in imgclass_log


def test_onnx_is_exported_once_into_the_private_cache_and_agrees(model_file):
    p = Predictor.load(model_file, "cpu")
    choose(p, "onnx", images=5)
    cached = cache_of(model_file) / "model.onnx"
    assert cached.parent.stat().st_mode & 0o777 == 0o700
    assert sorted(f.name for f in model_file.parent.iterdir()) == ["model.safetensors", "runtime-cache"]
    assert isinstance(p.engine, OnnxEngine) and p.engine.path == cached
    assert onnx_metadata(cached, SOURCE_KEY) == file_sha256(model_file)
    x = images(p)
    assert torch.allclose(p.probabilities(x), reference(model_file, x), atol=1e-4)
    stamp = cached.stat().st_mtime_ns
    choose(Predictor.load(model_file, "cpu"), "onnx", images=5)
    assert cached.stat().st_mtime_ns == stamp                        # reused, not exported again


def test_another_process_rebuilds_the_choice_without_the_pytorch_model(model_file):
    """load_chosen (Ray's actors): the kind chosen elsewhere, rebuilt from the cache as the export's own Predictor
    (no PyTorch model), or the model file's when the engine is PyTorch or the model is asked for."""
    p = Predictor.load(model_file, "cpu")
    p.use(rt.choose_runtime(p, "onnx", images=5))
    assert rt.chosen_kind(p.engine) == "onnx float32"
    x = images(p)
    want = reference(model_file, x)
    rebuilt = rt.load_chosen(model_file, "onnx float32")
    assert rebuilt.model is None and rebuilt.engine.path == cache_of(model_file) / "model.onnx"
    assert rebuilt.classes == p.classes and rebuilt.pre == p.pre
    assert torch.allclose(rebuilt.probabilities(x), want, atol=1e-4)
    with_model = rt.load_chosen(model_file.parent, "onnx float32", with_model=True)  # a run folder resolves too
    assert with_model.model is not None and isinstance(with_model.engine, OnnxEngine)
    torch_bf16 = rt.load_chosen(model_file, "torch bf16")
    assert isinstance(torch_bf16.engine, TorchEngine) and torch_bf16.engine.bf16
    assert torch.allclose(torch_bf16.probabilities(x), want, atol=rt.BF16_TOLERANCE)
    exported = rt.load_chosen(cache_of(model_file) / "model.onnx", "torch float32")  # an export runs as it is
    assert exported.model is None and exported.engine.runtime == "onnx"
    shutil.rmtree(cache_of(model_file))                      # a node that never saw this model: made there
    assert rt.load_chosen(model_file, "onnx float32").engine.path == cache_of(model_file) / "model.onnx"


def test_a_changed_model_file_is_exported_afresh(model_file, trained_run):
    choose(Predictor.load(model_file, "cpu"), "onnx", images=5)
    old = onnx_metadata(cache_of(model_file) / "model.onnx", SOURCE_KEY)
    from imgclass.models.modelfile import load_model, model_header, save_model
    model, header = load_model(model_file)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)                          # "retrained"
    save_model(model_file, model, header)
    p = Predictor.load(model_file, "cpu")
    choose(p, "onnx", images=5)
    assert onnx_metadata(cache_of(model_file) / "model.onnx", SOURCE_KEY) not in (None, old)
    x = images(p)
    assert torch.allclose(p.probabilities(x), reference(model_file, x), atol=1e-4)
    assert model_header is not None


def test_bf16_stays_within_tolerance(model_file, monkeypatch):
    monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: True)     # emulated where the CPU lacks it: slow, exact
    p = Predictor.load(model_file, "cpu")
    choose(p, "torch", "bf16", images=5)
    assert p.engine.bf16 and p.engine.precision == "bf16"
    x = images(p)
    got, want = p.probabilities(x), reference(model_file, x)
    assert float((got - want).abs().max()) <= rt.BF16_TOLERANCE and got.dtype == torch.float32
    monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(UserError, match="no native bf16"):
        choose(Predictor.load(model_file, "cpu"), "torch", "bf16")


def test_auto_without_native_bf16_on_a_small_job_stays_in_pytorch(model_file, monkeypatch):
    monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: False)
    p = Predictor.load(model_file, "cpu")
    note = choose(p, "auto", images=10)
    assert isinstance(p.engine, TorchEngine) and not p.engine.bf16
    assert "no native bf16" in note and f"{rt.AUTO_ONNX_IMAGES}+ images" in note
    assert not (cache_of(model_file) / "model.onnx").exists()       # a small job pays for no export


def test_a_small_job_remembers_the_bf16_check(model_file, monkeypatch):
    monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: True)
    checks = []
    real = rt.bf16_parity
    monkeypatch.setattr(rt, "bf16_parity", lambda p, x: checks.append(len(x)) or real(p, x))
    for _ in range(2):
        p = Predictor.load(model_file, "cpu")
        note = choose(p, "auto", images=3)
        assert p.engine.bf16 and "native bf16, within" in note
    assert len(checks) == 1                                          # checked once, then read back
    saved = json.loads((cache_of(model_file) / "runtime.json").read_text())
    assert saved[rt.machine_key()]["bf16_ok"] is True


def test_auto_for_a_service_measures_picks_the_fastest_and_remembers(model_file, monkeypatch):
    from imgclass.core.extras import available
    monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: True)
    rates = {"onnx float32": 50.0, "openvino float32": 60.0, "torch float32": 80.0, "torch bf16": 120.0}
    timed = []

    def fake_rate(engine, _images, _seconds):
        name = f"{engine.runtime} {engine.precision}"
        timed.append(name)
        return rates[name]
    monkeypatch.setattr(rt, "images_per_second", fake_rate)
    p = Predictor.load(model_file, "cpu")
    note = choose(p, "auto", images=None)
    assert isinstance(p.engine, TorchEngine) and p.engine.bf16
    assert note.startswith("runtime: torch bf16 (fastest measured") and "onnx float32 50" in note
    saved = json.loads((cache_of(model_file) / "runtime.json").read_text())
    candidates = {k: v for k, v in rates.items() if available("openvino") or not k.startswith("openvino")}
    assert saved[rt.machine_key()]["images_per_second"] == candidates
    assert saved["int8_refused"] == {}                              # a service does not make int8 exports
    timed.clear()
    rates["onnx float32"] = 500.0                                    # not timed again: the saved choice holds
    q = Predictor.load(model_file, "cpu")
    choose(q, "auto", images=5000)
    assert timed == [] and q.engine.bf16


def test_auto_picks_onnx_when_it_is_fastest(model_file, monkeypatch):
    monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(rt, "images_per_second", lambda e, _i, _s: 300.0 if e.runtime == "onnx" else 100.0)
    p = Predictor.load(model_file, "cpu")
    choose(p, "auto", images=rt.AUTO_ONNX_IMAGES)
    assert isinstance(p.engine, OnnxEngine)


def test_cli_states_the_choice_and_each_override_works(model_file, tmp_path, capsys, imgclass_log):
    from PIL import Image
    Image.fromarray(np.full((20, 20, 3), 120, np.uint8)).save(tmp_path / "a.png")
    outputs = {}
    for runtime in ("torch", "onnx"):
        assert main(["predict", str(model_file), str(tmp_path / "a.png"), "--runtime", runtime, "--precision",
                     "float32" if runtime == "torch" else "auto", "--format", "json"]) in (0, None)
        outputs[runtime] = json.loads(capsys.readouterr().out)[0]["top_k"]
        assert any(level == "INFO" and text.startswith(f"runtime: {runtime}") for level, text in imgclass_log)
    assert [t["label"] for t in outputs["torch"]] == [t["label"] for t in outputs["onnx"]]
    assert np.allclose([t["probability"] for t in outputs["torch"]], [t["probability"] for t in outputs["onnx"]],
                       atol=1e-4)
    assert main(["predict", str(model_file), str(tmp_path / "a.png"), "--runtime", "onnx", "--precision",
                 "bf16"]) == 2
    assert "ONNX Runtime runs the export in float32" in capsys.readouterr().err
    onnx_file = cache_of(model_file) / "model.onnx"
    assert main(["predict", str(onnx_file), str(tmp_path / "a.png"), "--format", "json"]) in (0, None)
    assert json.loads(capsys.readouterr().out)[0]["top_k"] == outputs["onnx"]    # an .onnx file predicts alone


def test_evaluate_and_submit_take_the_runtime_too(trained_run, tmp_path, imgclass_log):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval", "*.onnx", "*.runtime.json"))
    from imgclass.evaluation.evaluate import evaluate
    from imgclass.core.rundir import RunDir
    from imgclass.training.config import resolve
    test_dir = next(p for p in sorted(Path(resolve(RunDir(run).config).data).iterdir()) if p.is_dir())  # one class
    scores = {}
    for runtime, precision in (("torch", "float32"), ("onnx", "auto")):
        ev = evaluate(run, out=tmp_path / f"eval-{runtime}", runtime=runtime, precision=precision)
        scores[runtime] = ev.metrics
        assert any(text.startswith(f"runtime: {runtime}") for _, text in imgclass_log)
        assert main(["submit", str(run), str(test_dir), "--out", str(tmp_path / f"{runtime}.csv"), "--runtime", runtime,
                     "--precision", precision]) in (0, None)
    assert scores["onnx"]["accuracy"] == scores["torch"]["accuracy"]
    assert abs(scores["onnx"]["log_loss"] - scores["torch"]["log_loss"]) < 1e-4
    assert (tmp_path / "onnx.csv").read_bytes() == (tmp_path / "torch.csv").read_bytes()


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_predict_on_a_read_only_run_folder_writes_nothing_beside_it(trained_run, tmp_path, monkeypatch, capsys):
    import tempfile
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("*.onnx", "*.runtime.json"))
    image = next(run.parent.glob("run/eval/test/figures/*.png"), None) or next(trained_run.parent.rglob("*.png"))
    for path in [run, *run.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)                    # read-only (root could still write: compared)
    monkeypatch.setenv(rt.RUNTIME_CACHE_ENV, str(tmp_path / "cache"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    before = _tree(run)
    for runtime in ("auto", "onnx", "torch"):
        assert main(["predict", str(run), str(image), "--runtime", runtime, "--format", "json"]) in (0, None)
        assert json.loads(capsys.readouterr().out)[0]["top_k"]
    assert _tree(run) == before and list(tmp.iterdir()) == []       # nothing beside the model, nothing in /tmp
    assert (tmp_path / "cache" / file_sha256(run / "model.safetensors") / "model.onnx").is_file()
    for path in [run, *run.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)


def test_a_graph_planted_beside_the_model_never_runs(model_file, tmp_path, monkeypatch):
    """Whoever can write the model's folder must not choose the graph: an export of another model, tagged with
    this model file's SHA-256 (which anyone can compute), as MODEL.onnx and in the old runtime.json layout."""
    from imgclass.models.modelfile import load_model, save_model
    from imgclass.inference.graph import export_model
    model, header = load_model(model_file)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(-3.0)                                         # another model: other answers
    other = tmp_path / "other" / "model.safetensors"
    save_model(other, model, header)
    planted, _ = export_model(other, "onnx", model_file.with_suffix(".onnx"))
    import onnx
    graph = onnx.load(str(planted))
    next(p for p in graph.metadata_props if p.key == SOURCE_KEY).value = file_sha256(model_file)
    onnx.save(graph, str(planted))
    model_file.with_suffix(".runtime.json").write_text(json.dumps(
        {"source_sha256": file_sha256(model_file), rt.machine_key(): {"images_per_second": {"onnx float32": 1e9}}}))
    monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: False)
    x = images(Predictor.load(model_file, "cpu"))
    for runtime, n in (("onnx", 5), ("auto", None), ("auto", 5000), ("auto", 3)):
        p = Predictor.load(model_file, "cpu")
        choose(p, runtime, images=n)
        assert getattr(p.engine, "path", None) != planted
        assert torch.allclose(p.probabilities(x), reference(model_file, x), atol=1e-4)


def test_a_cache_folder_open_to_others_is_not_used(model_file, tmp_path, monkeypatch):
    import tempfile
    shared = tmp_path / "shared-cache"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv(rt.RUNTIME_CACHE_ENV, str(shared))
    monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: False)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    assert rt.private_dir(file_sha256(model_file)) is None
    p = Predictor.load(model_file, "cpu")
    note = choose(p, "auto", images=None)
    assert isinstance(p.engine, TorchEngine) and "no private runtime cache" in note
    q = Predictor.load(model_file, "cpu")
    choose(q, "onnx", images=5)                                       # still works: exported for this process
    x = images(q)
    assert isinstance(q.engine, OnnxEngine) and torch.allclose(q.probabilities(x), reference(model_file, x), atol=1e-4)
    assert list(tmp.iterdir()) == [] and not any(shared.rglob("*.onnx"))


def test_a_damaged_cached_export_is_exported_again(model_file, imgclass_log):
    """A truncated model.onnx in the cache (a crash elsewhere, a disk error) is not an export: it is made again
    with a warning, instead of failing every command at its metadata read."""
    choose(Predictor.load(model_file, "cpu"), "onnx", images=5)
    cached = cache_of(model_file) / "model.onnx"
    cached.write_bytes(cached.read_bytes()[:1000])
    p = Predictor.load(model_file, "cpu")
    choose(p, "onnx", images=5)
    assert onnx_metadata(cached, SOURCE_KEY) == file_sha256(model_file)
    x = images(p)
    assert torch.allclose(p.probabilities(x), reference(model_file, x), atol=1e-4)
    assert any(level == "WARNING" and "unreadable" in message for level, message in imgclass_log)


@pytest.mark.slow
def test_two_services_starting_together_share_one_cache_entry(model_file):
    """Two worker processes choosing the runtime at once (an export and timings each): both succeed, and the
    cache holds one complete export and a readable runtime.json, with no temporary file (every write is a
    per-process temporary file renamed into place)."""
    import json
    import os
    import subprocess
    import sys
    code = ("import sys; from imgclass.inference.predictor import Predictor; "
            "from imgclass.inference.runtime import choose_runtime; "
            "p = Predictor.load(sys.argv[1], 'cpu'); print(choose_runtime(p, 'auto', images=None).note)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(model_file)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ)) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folder = cache_of(model_file)
    assert onnx_metadata(folder / "model.onnx", SOURCE_KEY) == file_sha256(model_file)
    assert isinstance(json.loads((folder / "runtime.json").read_text()), dict)
    assert not list(folder.rglob("*.tmp"))
