"""A tune run of a few trials with SQLite storage, resumed by a second process against the same
storage (trial counts add up), whose best YAML trains."""
import subprocess
import sys

import optuna
import yaml

from imgclass.cli import main

from helpers import make_class_folders

FIXED = ["--model", "cnn", "--model-args", "width=8,depth=2", "--img-size", "8", "--epochs", "2", "--workers", "1",
         "--no-evaluate"]


def test_tune_shared_storage_and_best_config(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=10)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                                     "batch_size": {"type": "categorical", "choices": [4, 8]},
                                     "dropout": {"type": "float", "low": 0.0, "high": 0.3}}))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "tune"
    args = ["tune", str(data), "--trials", "2", "--space", str(space), "--storage", storage, "--study", "s1",
            "--out", str(out)] + FIXED
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "best validation accuracy" in text and "imgclass train --config" in text
    proc = subprocess.run([sys.executable, "-m", "imgclass"] + args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="s1", storage=storage)
    assert len(study.trials) == 4                                  # 2 + 2 from a second process
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["lr"] == study.best_params["lr"] and best["model"] == "cnn" and best["epochs"] == 2
    assert (out / "trials.csv").read_text().count("\n") == 5
    assert (out / "figures" / "optimization_history.png").stat().st_size > 1000
    assert main(["train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "final"), "--no-verbose"]) == 0
    assert (tmp_path / "final" / "model.safetensors").is_file()


def test_grid_sampler_and_bad_space(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=6)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"augment": {"type": "categorical", "choices": ["none", "light"]}}))
    assert main(["tune", str(data), "--trials", "2", "--sampler", "grid", "--space", str(space),
                 "--out", str(tmp_path / "g")] + FIXED) == 0
    study = optuna.load_study(study_name="imgclass", storage=f"sqlite:///{(tmp_path / 'g' / 'study.db').resolve()}")
    assert sorted(t.params["augment"] for t in study.trials) == ["light", "none"]   # the grid, each point once
    space.write_text("learning_rate: {type: float, low: 0.1, high: 1}\n")
    assert main(["tune", str(data), "--space", str(space), "--out", str(tmp_path / "h")] + FIXED) == 2
    assert "unknown config key 'learning_rate'" in capsys.readouterr().err


def test_pruning_callback_stops_a_poor_trial():
    from imgclass.tuning.tune import PruneOnVal

    class Trial:
        def __init__(self):
            self.reported = []

        def report(self, v, step):
            self.reported.append((step, v))

        def should_prune(self):
            return True

    class T:
        history = [{"val_acc": 0.2}]
        epoch = 1
        stop = False
        stop_reason = ""
    t, trial = T(), Trial()
    cb = PruneOnVal(trial)
    cb.after_epoch(t)
    assert trial.reported == [(1, 0.2)] and t.stop and cb.pruned


# issue 15: tune starts from train's plan, so `imgclass tune DATA` works with no other option

def _folder(root, side: int, per_class: int = 8):
    import numpy as np
    from helpers import tiny_image
    rng = np.random.RandomState(0)
    for i, name in enumerate(("a", "b", "c")):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            tiny_image(i, rng, side).save(root / name / f"{j}.png")
    return root


def test_tune_out_of_the_box_on_small_images(tmp_path, monkeypatch, capsys):
    """CIFAR-like 32 px images: `auto` is the fast network, which has no head widths to search (the default
    space offered them once, and every trial failed)."""
    data = _folder(tmp_path / "cifar-like", 32)
    monkeypatch.chdir(tmp_path)
    assert main(["tune", str(data), "--trials", "2", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "best validation accuracy" in out
    params = yaml.safe_load((tmp_path / "runs" / "tune" / "best.yaml").read_text())
    assert "head" not in params and len(list((tmp_path / "runs" / "tune").glob("trial-*"))) == 2


def test_tune_out_of_the_box_on_photos(tmp_path, monkeypatch, capsys):
    """Photos (96 px here): `auto` fine-tunes the installed EfficientNet-Lite0, in every trial."""
    data = _folder(tmp_path / "photos", 96, per_class=6)
    monkeypatch.chdir(tmp_path)
    assert main(["tune", str(data), "--trials", "2", "--epochs", "1"]) == 0
    assert "best validation accuracy" in capsys.readouterr().out
    trial = yaml.safe_load(next((tmp_path / "runs" / "tune").glob("trial-*/config.yaml")).read_text())
    assert trial["model"] == "timm:tf_efficientnet_lite0" and trial["pretrained"] is True


def test_a_space_the_model_cannot_train_is_refused_before_any_trial(tmp_path, capsys):
    data = _folder(tmp_path / "small", 32)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"head": {"type": "categorical", "choices": ["none", "128"]}}))
    assert main(["tune", str(data), "--space", str(space), "--out", str(tmp_path / "t")]) == 2
    assert "takes no head widths" in capsys.readouterr().err
    assert not list((tmp_path / "t").glob("trial-*"))
