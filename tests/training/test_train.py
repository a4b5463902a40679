import csv
import json

import pytest
import torch
import yaml

import imgclass
from imgclass.cli import main
from imgclass.core.errors import UserError
from imgclass.models.modelfile import load_model, read_header

from helpers import FAST, make_class_folders, make_labels_csv, make_split_folders


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_class_folders_run_writes_everything(tmp_path):
    data = make_class_folders(tmp_path / "data", classes=("10", "2", "1"), per_class=20)
    run = imgclass.train(data, out=str(tmp_path / "run"), **dict(FAST, epochs=3, tensorboard=True))
    d = run.dir
    assert run.classes == ["1", "2", "10"]
    for name in ("config.yaml", "splits.csv", "metrics.csv", "model.safetensors", "results.json",
                 "checkpoints/last.safetensors", "checkpoints/best.safetensors"):
        assert (d / name).is_file(), name
    assert list((d / "tensorboard").glob("events.out.tfevents.*"))
    rows = read_csv(d / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    splits = read_csv(d / "splits.csv")
    assert {r["split"] for r in splits} == {"train", "val", "test"} and len(splits) == 60
    assert yaml.safe_load((d / "config.yaml").read_text())["epochs"] == 3
    # colour classes are easy: the model must really have learnt
    assert run.metrics["test"]["accuracy"] >= 0.8
    header = read_header(d / "model.safetensors")
    assert header.classes == ("1", "2", "10")
    assert header.preprocessing.img_size == 8 and header.preprocessing.resize == "crop"
    assert header.metrics["test"]["accuracy"] == run.metrics["test"]["accuracy"]
    assert header.arch.to_dict() == {"name": "cnn", "args": {"width": 8, "depth": 2}, "dropout": 0.0}


def test_same_seed_same_split_and_weights(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=10)
    a = imgclass.train(data, out=str(tmp_path / "a"), **FAST)
    b = imgclass.train(data, out=str(tmp_path / "b"), **FAST)
    assert (a.dir / "splits.csv").read_bytes() == (b.dir / "splits.csv").read_bytes()
    ma, _ = load_model(a.dir)
    mb, _ = load_model(b.dir)
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("splits", [("train", "val", "test"), ("train", "valid"), ("train", "test"), ("train",)])
def test_split_folder_layouts(tmp_path, splits):
    data = make_split_folders(tmp_path / "data", splits=splits)
    run = imgclass.train(data, out=str(tmp_path / "run"), **FAST)
    rows = read_csv(run.dir / "splits.csv")
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    if "test" in splits:
        assert all(r["path"].startswith("test/") for r in by_split["test"])
    else:   # carved from train
        assert by_split["test"] and all(r["path"].startswith("train/") for r in by_split["test"])
    assert by_split["val"] and set(run.metrics) == {"train", "val", "test"}


def test_labels_csv_layout(tmp_path):
    csv_path = make_labels_csv(tmp_path, classes=("10", "2", "1"))
    run = imgclass.train(tmp_path / "images", labels=str(csv_path), out=str(tmp_path / "run"), **FAST)
    assert run.classes == ["1", "2", "10"]
    assert sum(m["n"] for m in run.metrics.values()) == 30


def test_config_file_and_unknown_key(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=8)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(dict(FAST, epochs=1, lr=0.003)))
    run = imgclass.train(data, config=cfg, out=str(tmp_path / "run"))
    saved = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert saved["lr"] == 0.003 and saved["epochs"] == 1 and saved["data"] == str(data)
    cfg.write_text("learning_rate: 0.1\n")
    with pytest.raises(UserError, match="unknown config key 'learning_rate'"):
        imgclass.train(data, config=cfg, out=str(tmp_path / "run2"))


def test_early_stopping(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=10)
    # lr so small nothing improves after the first epoch: patience 1 stops at epoch 2
    run = imgclass.train(data, out=str(tmp_path / "run"), **dict(FAST, epochs=10, patience=1, lr=1e-9))
    results = json.loads((run.dir / "results.json").read_text())
    assert results["epochs_run"] < 10 and "early stopping" in results["stop_reason"]
    assert len(run.history) == results["epochs_run"]


def test_refuses_to_overwrite_a_run(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=6)
    imgclass.train(data, out=str(tmp_path / "run"), **dict(FAST, epochs=1))
    with pytest.raises(UserError, match="not empty.*--resume"):
        imgclass.train(data, out=str(tmp_path / "run"), **dict(FAST, epochs=1))


def test_bad_files_are_skipped_and_listed(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=10)
    (data / "cat" / "broken.jpg").write_text("<html>not found</html>")
    (data / "dog" / "empty.png").write_bytes(b"")
    run = imgclass.train(data, out=str(tmp_path / "run"), **FAST)
    bad = read_csv(run.dir / "bad_files.csv")
    assert sorted(r["path"] for r in bad) == ["cat/broken.jpg", "dog/empty.png"]
    assert sum(m["n"] for m in run.metrics.values()) == 30


def test_sgd_zoo_and_mlp_train(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=6)
    for i, opts in enumerate([dict(model="mlp", optimizer="sgd"), dict(model="timm:resnet10t", img_size=16, model_args={}),
                              dict(model="resnet", model_args={"width": 4, "depth": 1}, augment="strong")]):
        run = imgclass.train(data, out=str(tmp_path / f"r{i}"), **dict(FAST, epochs=1, **opts))
        model, header = load_model(run.dir)
        assert header.arch.name == opts["model"]


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("rmsprop", torch.optim.RMSprop)])
def test_adam_and_rmsprop_train(tmp_path, monkeypatch, name, cls):
    from imgclass.training.loop import optim
    made = []
    real = optim.optimizer_for
    monkeypatch.setattr(optim, "optimizer_for", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    data = make_class_folders(tmp_path / "data", per_class=12)
    run = imgclass.train(data, out=str(tmp_path / name), **dict(FAST, epochs=4, optimizer=name, lr=3e-3))
    assert [type(o) for o in made] == [cls]
    if name == "rmsprop":
        assert made[0].defaults["alpha"] == 0.9
    assert made[0].param_groups[0]["weight_decay"] == 0.0          # Keras's default for both: no L2
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    assert run.metrics["train"]["accuracy"] > 0.6                   # three easy classes: chance is 1/3


def test_activation_option(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=6)
    run = imgclass.train(data, out=str(tmp_path / "gelu"), **dict(FAST, epochs=1, activation="gelu"))
    model, header = load_model(run.dir)
    assert header.arch.args["activation"] == "gelu"
    assert any(isinstance(m, torch.nn.GELU) for m in model.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    assert main(["train", str(data), "--model", "timm:resnet10t", "--activation", "gelu",
                 "--out", str(tmp_path / "zoo")]) == 2
    assert "--activation is for imgclass's own networks" in capsys.readouterr().err


def test_results_say_what_each_stage_of_the_end_cost(tmp_path):
    """results.json times the final scoring and each split's report (issue 28, item 4): the stages add up to no
    more than the run's total."""
    import json
    data = make_class_folders(tmp_path / "data", per_class=10)
    run = imgclass.train(data, out=str(tmp_path / "run"), **dict(FAST, epochs=1, evaluate=True))
    r = json.loads((run.dir / "results.json").read_text())
    assert r["scoring_seconds"] > 0 and set(r["report_seconds"]) == {"val", "test"}
    assert all(v > 0 for v in r["report_seconds"].values())
    parts = r["train_seconds"] + r["decode_seconds"] + r["head_seconds"] + r["scoring_seconds"] + sum(
        r["report_seconds"].values())
    assert parts <= r["total_seconds"]
