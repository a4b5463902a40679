"""A tune run of a few trials with SQLite storage, resumed by a second process against the same
storage (trial counts add up), whose best YAML trains."""
import subprocess
import sys

import optuna
import pytest
import yaml

from imgclass.cli import main

from helpers import make_class_folders

FIXED = ["--model", "cnn", "--model-args", "width=8,depth=2", "--img-size", "8", "--epochs", "2", "--workers", "1",
         "--no-evaluate"]


@pytest.mark.slow
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
    assert "best validation score" in text and "imgclass train --config" in text
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
    assert "best validation score" in out
    params = yaml.safe_load((tmp_path / "runs" / "tune" / "best.yaml").read_text())
    assert "head" not in params and len(list((tmp_path / "runs" / "tune").glob("trial-*"))) == 2


def test_tune_out_of_the_box_on_photos(tmp_path, monkeypatch, capsys):
    """Photos (96 px here): `auto` fine-tunes the installed EfficientNet-Lite0, in every trial."""
    data = _folder(tmp_path / "photos", 96, per_class=6)
    monkeypatch.chdir(tmp_path)
    assert main(["tune", str(data), "--trials", "2", "--epochs", "1"]) == 0
    assert "best validation score" in capsys.readouterr().out
    trial = yaml.safe_load(next((tmp_path / "runs" / "tune").glob("trial-*/config.yaml")).read_text())
    assert trial["model"] == "timm:tf_efficientnet_lite0" and trial["pretrained"] is True


def test_a_space_the_model_cannot_train_is_refused_before_any_trial(tmp_path, capsys):
    data = _folder(tmp_path / "small", 32)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"head": {"type": "categorical", "choices": ["none", "128"]}}))
    assert main(["tune", str(data), "--space", str(space), "--out", str(tmp_path / "t")]) == 2
    assert "takes no head widths" in capsys.readouterr().err
    assert not list((tmp_path / "t").glob("trial-*"))


def test_grid_runs_every_point_to_the_end_unless_median_is_asked(tmp_path, monkeypatch):
    import csv
    data = make_class_folders(tmp_path / "data", per_class=8)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"lr": {"type": "categorical", "choices": [1e-4, 1e-3, 1e-2, 1e-1]}}))
    pruners = []
    real = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda **kw: pruners.append(kw["pruner"]) or real(**kw))
    assert main(["tune", str(data), "--trials", "4", "--sampler", "grid", "--space", str(space),
                 "--out", str(tmp_path / "g")] + FIXED) == 0
    assert isinstance(pruners[-1], optuna.pruners.NopPruner)
    study = optuna.load_study(study_name="imgclass", storage=f"sqlite:///{(tmp_path / 'g' / 'study.db').resolve()}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    for t in study.trials:  # every trial trained all its epochs
        rows = list(csv.DictReader(open(f"{t.user_attrs['run']}/metrics.csv")))
        assert len(rows) == 2
    assert main(["tune", str(data), "--trials", "1", "--sampler", "grid", "--space", str(space), "--pruner", "median",
                 "--out", str(tmp_path / "m")] + FIXED) == 0
    assert isinstance(pruners[-1], optuna.pruners.MedianPruner)
    assert main(["tune", str(data), "--trials", "1", "--space", str(space), "--out", str(tmp_path / "t")] + FIXED) == 0
    assert isinstance(pruners[-1], optuna.pruners.MedianPruner)  # tpe: median by default


def test_folds_partition_the_training_split(tmp_path):
    import pytest
    from imgclass.data.labels import CLASSES, LabelSource
    from imgclass.data.split import folds, make_split
    from imgclass.core.errors import DataError
    split, _ = make_split(CLASSES.find(LabelSource(make_class_folders(tmp_path / "data", per_class=11))), 0.1, 0.2, 101)
    parts = folds(split, 3, seed=5)
    train = sorted(split.items["train"])
    assert sorted(r for f in parts for r in f.items["val"]) == train          # the val parts cover it once
    for f in parts:
        assert sorted(f.items["train"] + f.items["val"]) == train and not set(f.items["train"]) & set(f.items["val"])
        assert f.items["test"] == split.items["test"]                        # test untouched
        per_class = [sum(1 for _, lab in f.items["val"] if lab == c) for c in range(3)]
        assert max(per_class) - min(per_class) <= 1                          # stratified
    with pytest.raises(DataError, match="--cv 20 needs at least 20 training images of every class"):
        folds(split, 20, seed=5)


def test_cv_scores_are_the_mean_of_the_folds(tmp_path, capsys):
    import csv
    data = make_class_folders(tmp_path / "data", per_class=10)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"lr": {"type": "categorical", "choices": [1e-2]}}))
    out = tmp_path / "cv"
    assert main(["tune", str(data), "--trials", "1", "--cv", "3", "--space", str(space), "--out", str(out)]
                + FIXED) == 0
    study = optuna.load_study(study_name="imgclass", storage=f"sqlite:///{(out / 'study.db').resolve()}")
    trial = study.trials[0]
    best = []
    for i in range(3):
        rows = list(csv.DictReader(open(out / "trial-0" / f"fold-{i}" / "metrics.csv")))
        best.append(max(float(r["val_acc"]) for r in rows))
    from pytest import approx
    assert trial.user_attrs["fold_scores"] == approx(best, abs=1e-5)    # metrics.csv keeps 6 digits
    assert trial.value == approx(sum(trial.user_attrs["fold_scores"]) / 3, abs=1e-12)
    row = next(csv.DictReader(open(out / "trials.csv")))
    assert [float(s) for s in row["fold_scores"].split(";")] == approx(best, abs=1e-5)
    assert float(row["fold_std"]) >= 0
    splits = [list(csv.DictReader(open(out / "trial-0" / f"fold-{i}" / "splits.csv"))) for i in range(3)]
    vals = [r["path"] for s in splits for r in s if r["split"] == "val"]
    assert len(vals) == len(set(vals))                                       # each image validates once


def test_sweep_one_setting_then_the_summary(tmp_path, capsys):
    import csv
    import pytest
    from imgclass.core.errors import UserError
    from imgclass.tuning.sweep import parse_sweep
    data = make_class_folders(tmp_path / "data", per_class=8)
    out = tmp_path / "sw"
    assert main(["train", str(data), "--sweep", "lr=0.1,0.01,0.001", "--out", str(out)] + FIXED) == 0
    text = capsys.readouterr().out
    for lr in ("0.1", "0.01", "0.001"):
        cfg = yaml.safe_load((out / f"lr={lr}" / "config.yaml").read_text())
        assert cfg["lr"] == float(lr) and cfg["model"] == "cnn"
    splits = {(out / f"lr={lr}" / "splits.csv").read_text() for lr in ("0.1", "0.01", "0.001")}
    assert len(splits) == 1                                           # the same split for every value
    assert (out / "summary" / "report.html").is_file() and "lr=0.01" in (out / "summary" / "report.md").read_text()
    header = text.splitlines()[0].split()
    assert header[:3] == ["run", "model", "lr"] and ("favours" in text or "no verdict" in text)
    assert parse_sweep("img_size=16;24,32") == ("img_size", ["16", "24,32"])
    with pytest.raises(UserError, match="SETTING=V1,V2"):
        parse_sweep("lr")
    # a bad value is refused before any run starts
    assert main(["train", str(data), "--sweep", "batch_size=8,many", "--out", str(tmp_path / "bad")] + FIXED) == 2
    assert "batch_size must be an integer" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["train", str(data), "--sweep", "lr=0.1,0.2", "--lr", "0.3", "--out", str(tmp_path / "b2")]) == 2
    assert "lr is swept" in capsys.readouterr().err
