import json
import time

import pytest
import torch
import yaml

import imgclass
from imgclass.training.config import parse_duration
from imgclass.models.modelfile import read_header

from helpers import make_class_folders


def test_default_train_uses_fast_path_sized_from_data(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=10)   # 12 px images
    run = imgclass.train(data, out=str(tmp_path / "run"), epochs=1, verbose=False, tensorboard=False, evaluate=False)
    cfg = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert cfg["model"] == "fast" and cfg["img_size"] == 16          # 12 px rounds to 16, the minimum
    assert cfg["optimizer"] == "sgd" and cfg["label_smoothing"] == 0.2 and cfg["tta"] == "flip_translate"
    # the recipe's batch of 1024 shrinks for 24 training images, its lr scaled with it: decided by the plan
    # before config.yaml is written (once), and recorded in results.json (and checkpoints) too
    assert cfg["batch_size"] == 16 and abs(cfg["lr"] - 1.5 * 16 / 1024) < 1e-12
    plan = json.loads((run.dir / "results.json").read_text())["plan"]
    assert plan["batch_size"] == 16 and abs(plan["lr"] - 1.5 * 16 / 1024) < 1e-12
    assert run.config.batch_size == 16
    header = read_header(run.dir / "model.safetensors")
    assert header.tta == "flip_translate"                                     # the recipe's TTA, stored
    assert header.temperature == header.calibration["temperature"] > 0
    # the recipe sits below the user's own options
    run2 = imgclass.train(data, out=str(tmp_path / "run2"), epochs=1, label_smoothing=0.0, tta="none",
                          verbose=False, tensorboard=False, evaluate=False)
    assert run2.config.label_smoothing == 0.0 and run2.config.tta == "none" and run2.config.model == "fast"
    run3 = imgclass.train(data, out=str(tmp_path / "run3"), epochs=1, batch_size=64, verbose=False, tensorboard=False,
                          evaluate=False)
    assert run3.config.batch_size == 64 and run3.config.lr is None   # a batch the user chose is kept


@pytest.mark.slow
def test_time_budget_is_honoured(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=40)
    started = time.perf_counter()
    run = imgclass.train(data, out=str(tmp_path / "run"), time_budget="20s", model_args={"width": 8},
                         verbose=False, tensorboard=False)
    wall = time.perf_counter() - started
    results = json.loads((run.dir / "results.json").read_text())
    assert wall <= 20 * 1.25            # ends (with its evaluation and report) within the budget
    assert results["epochs_run"] >= 2   # epochs were planned from the measured step time, not the default
    assert results["time_budget"] == "20s"
    assert (run.dir / "eval" / "test" / "report.html").is_file()


def test_a_budget_spent_before_training_stops_with_the_reason(tmp_path):
    """Not one epoch fits (here: 4 s, less than the reserve for the two reports): a clear error, not a model
    trained for no time (a GPU run with its budget spent decoding wrote a chance-level model)."""
    import pytest
    from imgclass.core.errors import UserError
    data = make_class_folders(tmp_path / "data", per_class=10)
    with pytest.raises(UserError, match=r"--time-budget 4s: .* nothing would be trained\. Give a longer budget"):
        imgclass.train(data, out=str(tmp_path / "run"), time_budget="4s", verbose=False, tensorboard=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_parse_duration():
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration("2") == 2


def test_progressive_resizing(tmp_path):
    import csv
    from imgclass.models.modelfile import load_model
    data = make_class_folders(tmp_path / "data", per_class=10)
    run = imgclass.train(data, out=str(tmp_path / "run"), model="cnn", model_args={"width": 8, "depth": 2},
                         img_size="8,16", epochs=3, verbose=False, tensorboard=False, evaluate=False, workers=1)
    with open(run.dir / "metrics.csv", newline="") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3]   # one schedule across both phases
    model, header = load_model(run.dir)
    assert header.img_size == 16                                # best chosen among epochs at the final size
    assert json.loads((run.dir / "results.json").read_text())["epochs_run"] == 3
    final = imgclass.load(run.dir / "checkpoints" / "last.safetensors")
    assert final.pre.img_size == 16                             # the last phase trained at 16 px
    from imgclass.training.config import phase_epochs
    assert phase_epochs(3, 2) == [1, 2] and phase_epochs(10, 3) == [3, 3, 4]


def test_budget_widens_the_network_only_with_room_for_the_recipe():
    from imgclass.training.config import TrainConfig
    from imgclass.models import get_spec
    from imgclass.models.header import Architecture
    from imgclass.models.tasks import SINGLE_LABEL
    from imgclass.training.stages.budget import FLOP_SCREEN_SLACK, wider_models
    spec, classes = get_spec("fast"), [str(i) for i in range(10)]

    def wider(epochs, **cfg):
        return [w for w, _ in wider_models(spec, TrainConfig(model="fast", **cfg), Architecture("fast"), classes,
                                           SINGLE_LABEL, epochs, 32, 1)]

    # FLOPs at 32 px: width 64 costs ~3.6x width 32 and width 48 ~2.1x; the recipe wants 10 epochs, and a width
    # passes the screen when it would fit them at FLOP_SCREEN_SLACK times the speed its FLOPs predict
    assert FLOP_SCREEN_SLACK == 1.0
    assert wider(100) == [64, 48]                           # both measured, widest first
    assert wider(25) == [48]
    assert wider(15) == []
    assert wider(100, model_args={"width": 32}) == []      # a width the user chose is kept
    (width, model), _ = wider_models(spec, TrainConfig(model="fast"), Architecture("fast"), classes, SINGLE_LABEL,
                                     100, 32, 1)
    assert width == 64 and model.num_features == 4 * 64


def test_streaming_trains_exactly_like_the_cache(tmp_path, monkeypatch, imgclass_log):
    from imgclass.data import cache as cache_mod
    data = make_class_folders(tmp_path / "data", per_class=12)
    opts = dict(model="cnn", model_args={"width": 8, "depth": 2}, img_size=16, epochs=2, batch_size=8, workers=2,
                verbose=False, tensorboard=False, evaluate=False, cache_dir=str(tmp_path / "cache"))
    cached = imgclass.train(data, out=str(tmp_path / "cached"), **opts)
    streamed = imgclass.train(data, out=str(tmp_path / "streamed"), stream=True, **opts)
    # the cache would not fit on the disk: streaming is chosen, with a note, and nothing is written
    monkeypatch.setattr(cache_mod, "fits_on_disk", lambda *a: False)
    auto = imgclass.train(data, out=str(tmp_path / "auto"), **dict(opts, cache_dir=str(tmp_path / "cache2")))
    assert [m for level, m in imgclass_log if "would not fit on the disk" in m and level == "WARNING"]
    assert not (tmp_path / "cache2").exists()
    # a full disk does not push a run off a cache that is already there
    imgclass_log.clear()
    imgclass.train(data, out=str(tmp_path / "again"), **opts)
    assert not [m for _, m in imgclass_log if "would not fit" in m]
    from safetensors.torch import load_file
    ref = load_file(str(cached.model_path))
    for run in (streamed, auto):
        weights = load_file(str(run.model_path))
        assert all(torch.equal(ref[k], weights[k]) for k in ref)
    assert streamed.metrics["test"]["accuracy"] == cached.metrics["test"]["accuracy"]


def test_precision_choice_and_effect(tmp_path, monkeypatch):
    from pathlib import Path
    from imgclass.models import inference
    from imgclass.training.loop import device as run_mod
    cpu = torch.device("cpu")
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):  # (make test-other-cpu restricts the kernels)
        monkeypatch.delenv(name, raising=False)
    assert run_mod.use_bf16("bf16", cpu) and not run_mod.use_bf16("fp32", cpu)
    for flags, native in (("fpu avx2 avx512f avx512_bf16 avx512vl", True), ("fpu avx2 avx512f avx512bw avx512vl", False),
                          ("fpu avx2 amx_bf16 amx_tile", True)):
        inference.cpu_info.cache_clear()
        monkeypatch.setattr(Path, "read_text", lambda self, *a, f=flags, **k: f"model name\t: X\nflags\t\t: {f}\n")
        assert run_mod.use_bf16("auto", cpu) == native  # native bf16 (AVX512-BF16 or AMX): auto uses it
        assert inference.cpu_info() == ("X", frozenset(flags.split()))
        with monkeypatch.context() as restricted:   # kernels kept below AVX-512, as on a CPU without it: emulated
            restricted.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
            assert not run_mod.use_bf16("auto", cpu)
    monkeypatch.undo()
    inference.cpu_info.cache_clear()
    data = make_class_folders(tmp_path / "data", per_class=8)
    opts = dict(model="cnn", model_args={"width": 8, "depth": 2}, img_size=16, epochs=1, batch_size=8, workers=1,
                verbose=False, tensorboard=False, evaluate=False)
    from safetensors.torch import load_file
    w32 = load_file(str(imgclass.train(data, out=str(tmp_path / "a"), precision="fp32", **opts).model_path))
    w16 = load_file(str(imgclass.train(data, out=str(tmp_path / "b"), precision="bf16", **opts).model_path))
    from imgclass.models.reject import BANK_KEY  # (the rejection's training embeddings are float16: not weights)
    assert {v.dtype for k, v in w16.items() if k != BANK_KEY} == {torch.float32, torch.int64}  # weights stay float32
    assert any(not torch.equal(w32[k], w16[k]) for k in w32)        # the arithmetic really changed


def test_budget_picks_the_long_recipe_and_resume_keeps_it(tmp_path, monkeypatch, imgclass_log):
    """A budget that fits 40+ epochs of the fast model gets its long recipe (4 px shifts, cutout), said in one
    line and recorded, so a run stopped after an epoch resumes with the same augmentation and ends identical."""
    from imgclass.training.stages import budget
    from imgclass.training.loop.fit import GROWTH_LIMIT, Callback
    from safetensors.torch import load_file

    class Crash(Callback):
        order = 100  # after the epoch's checkpoint

        def after_epoch(self, t):
            if t.epoch == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(budget, "plan_budget", lambda *a, **k: (40, 1.0, 0.01))
    data = make_class_folders(tmp_path / "data", per_class=8)
    opts = dict(time_budget="10m", model_args={"width": 8}, verbose=False, tensorboard=False, evaluate=False)
    full = imgclass.train(data, out=str(tmp_path / "full"), **opts)
    said = [m for _, m in imgclass_log if "long recipe" in m]
    assert len(said) == 1 and "cutout 0.375" in said[0] and "translate 0.125" in said[0]
    grown = int(GROWTH_LIMIT * 40)  # ten minutes hold far more than the 40 planned: the plan grows to its limit
    assert (full.config.cutout, full.config.translate, len(full.history)) == (0.375, 0.125, grown)
    plan = json.loads((full.dir / "results.json").read_text())["plan"]
    assert plan["cutout"] == 0.375 and plan["translate"] == 0.125
    with pytest.raises(KeyboardInterrupt):
        imgclass.train(data, out=str(tmp_path / "killed"), callbacks=[Crash()], **opts)
    resumed = imgclass.train(resume=tmp_path / "killed")
    assert (resumed.config.cutout, resumed.config.translate) == (0.375, 0.125)
    a, b = (load_file(str(d / "checkpoints" / "last.safetensors")) for d in (full.dir, resumed.dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    mine = imgclass.train(data, out=str(tmp_path / "mine"), translate=0.0625, **opts)  # the user's augmentation stands
    assert mine.config.cutout is None and mine.config.translate == 0.0625


def test_a_compiled_run_is_planned_from_a_compiled_step(monkeypatch):
    """issue 40, item 18: the budget's step probe timed an uncompiled copy while the run trained a compiled model,
    so a compiled run was planned at eager speed and left much of its budget unused; the probe now goes through
    torch.compile as the run does, and its compilation is a one-off the plan reserves."""
    import dataclasses

    import torch

    from imgclass.models.registry import create_model
    from imgclass.training.config import TrainConfig
    from imgclass.training.stages import budget
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **_: compiled.append(module) or module)
    model = create_model("cnn", num_classes=3, width=8, depth=2)
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    cfg = TrainConfig()
    per_image, one_off = budget.step_seconds(model, x, y, cfg, torch.device("cpu"))
    assert compiled == [] and per_image > 0 and one_off >= 0
    budget.step_seconds(model, x, y, dataclasses.replace(cfg, compile=True), torch.device("cpu"), compiled=True)
    assert len(compiled) == 1 and compiled[0] is not model  # a copy, compiled as the run's model will be
