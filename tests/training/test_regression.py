"""A number per image (issue 39, item 5), end to end: read from a labels CSV's column of numbers (its split column
honoured), trained on standardised targets, scored like scikit-learn, and answered as a number by predict, submit,
the service and the exports; what does not apply is refused in one line."""
import csv
import json

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

import imgclass
from imgclass.cli import main
from imgclass.data.labels import NUMBERS, LabelSource
from imgclass.data.split import make_split
from imgclass.core.errors import DataError, UserError
from imgclass.models.modelfile import read_header, read_onnx_header

from helpers import local_client, make_numbered_folder

SMALL = dict(model="cnn", model_args={"width": 8, "depth": 2}, img_size=16, batch_size=16, hflip=False, verbose=False,
             tensorboard=False, workers=1)
FP32 = ["--runtime", "torch", "--precision", "float32"]


@pytest.fixture(scope="module")
def number_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("numbers")
    data, labels = make_numbered_folder(root, n=160, split_column=True)
    run = imgclass.train(data, labels=str(labels), label_column="target", regression=True, epochs=20,
                         out=str(root / "run"), **SMALL)
    return run, data, labels


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_split_column_is_honoured_and_the_task_stored(number_run):
    run, _, labels = number_run
    given = {r["file"]: (r["split"], float(r["target"])) for r in _csv(labels)}
    saved = _csv(run.dir / "splits.csv")
    assert len(saved) == len(given)
    for row in saved:
        split, value = given[row["path"].rsplit("/", 1)[-1].rsplit(".", 1)[0]]
        assert row["split"] == split and float(row["label"]) == value
    header = read_header(run.dir / "model.safetensors")
    train = [v for s, v in given.values() if s == "train"]
    assert header.task.name == "regression" and header.format_version == 4 and list(header.classes) == ["target"]
    assert header.task.target_mean == pytest.approx(np.mean(train)) and header.task.target_std == pytest.approx(np.std(train))
    assert header.calibration is None and header.reject is None     # nothing to calibrate, nothing to reject
    assert header.preprocessing.resize == "stretch" and header.tta == "none"  # whole images; SMALL has no hflip


def test_a_number_run_learns_and_scores_like_sklearn(number_run):
    run, _, _ = number_run
    m = json.loads((run.dir / "eval" / "test" / "metrics.json").read_text())
    rows = _csv(run.dir / "eval" / "test" / "predictions.csv")
    y, p = np.array([float(r["label"]) for r in rows]), np.array([float(r["prediction"]) for r in rows])
    assert m["n"] == len(rows) == 24
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, p), rel=1e-6)
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, p)), rel=1e-6)
    assert m["r2"] == pytest.approx(skm.r2_score(y, p), rel=1e-6)
    assert m["median_absolute_error"] == pytest.approx(skm.median_absolute_error(y, p), rel=1e-6)
    assert m["max_error"] == pytest.approx(skm.max_error(y, p), rel=1e-6)
    assert m["spearman"] == pytest.approx(stats.spearmanr(y, p).statistic, rel=1e-6)
    assert m["pearson"] == pytest.approx(stats.pearsonr(y, p).statistic, rel=1e-6)
    assert np.allclose([float(r["error"]) for r in rows], p - y, atol=1e-4)
    header = read_header(run.dir / "model.safetensors")
    assert m["baseline_mae"] == pytest.approx(skm.mean_absolute_error(y, np.full_like(y, header.task.target_mean)))
    assert m["mae"] < 0.6 * m["baseline_mae"] and m["spearman"] > 0.8   # the square's size is visible: it has learnt
    results = json.loads((run.dir / "results.json").read_text())["metrics"]
    assert results["test"]["mae"] == pytest.approx(m["mae"], rel=1e-4) and results["test"]["n"] == 24
    history = _csv(run.dir / "metrics.csv")   # the validation score is minus the MAE: the best epoch is the lowest
    assert all(float(r["val_acc"]) <= 0 for r in history)
    figures = {f.stem for f in (run.dir / "eval" / "test" / "figures").iterdir()}
    assert {"training_curves", "predicted_vs_true", "residuals", "gallery_largest_errors"} <= figures
    report = (run.dir / "eval" / "test" / "report.md").read_text()
    assert "MAE" in report and "training mean" in report


def test_every_command_answers_a_number(number_run, tmp_path, capsys):
    run, data, _ = number_run
    rows = _csv(run.dir / "eval" / "test" / "predictions.csv")
    images = [str(data / r["path"]) for r in rows]
    want = np.array([float(r["prediction"]) for r in rows])
    assert main(["predict", str(run.dir), *images, "--format", "json", *FP32]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert np.allclose([a["value"] for a in answers], want, atol=1e-3) and "top_k" not in answers[0]
    assert main(["predict", str(run.dir), images[0], "--format", "csv", *FP32]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "image,value,error" and float(lines[1].split(",")[1]) == pytest.approx(want[0], abs=1e-3)
    assert main(["predict", str(run.dir), images[0], *FP32]) == 0
    assert f"{want[0]:.4g}"[:3] in capsys.readouterr().out
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    for image in images:
        (test_dir / image.rsplit("/", 1)[-1]).write_bytes(open(image, "rb").read())
    assert main(["submit", str(run.dir), str(test_dir), "--out", str(tmp_path / "sub.csv"), *FP32]) == 0
    sub = list(csv.reader(open(tmp_path / "sub.csv")))
    assert sub[0] == ["ID", "TARGET"] and len(sub) == len(images) + 1
    by_id = {r[0]: float(r[1]) for r in sub[1:]}
    assert np.allclose([by_id[i.rsplit("/", 1)[-1][:-4]] for i in images], want, atol=1e-3)
    from imgclass.serving.app import create_app
    client = local_client(create_app(run.dir, runtime="torch", precision="float32"))
    served = client.post("/predict", files={"file": ("x.png", open(images[0], "rb").read(), "image/png")}).json()
    assert served["value"] == pytest.approx(want[0], abs=1e-3)
    assert main(["export", str(run.dir), "--out", str(tmp_path / "m.onnx")]) == 0
    assert read_onnx_header(tmp_path / "m.onnx").task == read_header(run.dir / "model.safetensors").task
    import onnxruntime as ort
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"pixels": x.float().numpy()})[0]
    expected = imgclass.load(run.dir, device="cpu").probabilities(x).numpy()
    assert got.shape == (4, 1) and np.allclose(got, expected, atol=1e-3)   # the number itself, de-standardised inside
    onnx_answers = imgclass.predict(tmp_path / "m.onnx", images[:3])
    assert np.allclose([a["value"] for a in onnx_answers], want[:3], atol=1e-3)
    assert main(["export", str(run.dir), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    assert main(["export", str(run.dir), "--format", "hub", "--out", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "Predict target, a number" in card
    capsys.readouterr()
    assert main(["evaluate", str(run.dir), "--split", "val", "--out", str(tmp_path / "ev"), *FP32]) == 0
    assert capsys.readouterr().out.startswith("val: MAE ")


@pytest.mark.parametrize("argv, says", [
    (["--top-k", "2"], "--top-k ranks classes"),
    (["--reject"], "--reject answers 'none of these classes'"),
    (["--level", "coarse"], "one level"),
])
def test_predict_refuses_what_does_not_apply_in_one_line(number_run, argv, says, capsys):
    run, data, _ = number_run
    assert main(["predict", str(run.dir), str(data / "f0000.png"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_training_and_evaluation_refuse_what_does_not_apply(number_run, tmp_path):
    run, data, labels = number_run
    for options, says in ((dict(threshold=0.3), "--threshold decides tags"), (dict(mixup=0.2), "--mixup/--cutmix"),
                          (dict(class_weights="auto"), "--class-weights"), (dict(balanced_sampler=True), "--balanced")):
        with pytest.raises(UserError, match=says):
            imgclass.train(data, labels=str(labels), regression=True, out=str(tmp_path / "x"), **SMALL, **options)
    cropped = imgclass.train(data, labels=str(labels), regression=True, resize="crop", epochs=1,
                             out=str(tmp_path / "crop"), **SMALL)
    assert read_header(cropped.model_path).preprocessing.resize == "crop"  # the user's choice stands
    with pytest.raises(DataError, match="exclude each other"):
        imgclass.train(data, labels=str(labels), regression=True, multi_label=True, out=str(tmp_path / "y"), **SMALL)
    with pytest.raises(DataError, match="labels CSV"):
        imgclass.train(data, regression=True, out=str(tmp_path / "z"), **SMALL)
    with pytest.raises(UserError, match="--map"):
        imgclass.evaluate(run.dir, split="val", out=tmp_path / "ev", data_map=True)
    with pytest.raises(UserError, match="--format onehot"):
        imgclass.submit(run.dir, data, tmp_path / "s.csv", form="onehot")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,target\nf0000,12\nf0001,many\n")
    with pytest.raises(DataError, match="row 3: 'many' in column 'target' is not a number"):
        imgclass.train(data, labels=str(bad), regression=True, out=str(tmp_path / "w"), **SMALL)


def test_the_split_is_stratified_on_the_numbers_quantiles(tmp_path):
    """Without a split column, each split takes its share of every decile of the numbers (a random split of a few
    hundred images may leave the largest numbers out of test)."""
    data, labels = make_numbered_folder(tmp_path, n=200)
    found = NUMBERS.find(LabelSource(data, labels, label_column="target"))
    split, notes = make_split(found, 0.1, 0.2, seed=3)
    values = np.array([v for _, v, _ in found.items])
    edges = np.quantile(values, np.linspace(0, 1, 11)[1:-1])
    for name, share in (("val", 0.1), ("test", 0.2)):
        bins = np.bincount(np.searchsorted(edges, [v for _, v in split.items[name]], side="right"), minlength=10)
        whole = np.bincount(np.searchsorted(edges, values, side="right"), minlength=10)
        assert np.all(np.abs(bins - share * whole) <= 1.5)
    assert sum(len(v) for v in split.items.values()) == 200
    again, _ = make_split(NUMBERS.find(LabelSource(data, labels, label_column="target")), 0.1, 0.2, seed=3)
    assert again.items == split.items                                    # seeded: the same split


def test_a_regression_header_is_checked(number_run, tmp_path):
    from safetensors import safe_open
    from imgclass.models.header import ModelHeader
    run, _, _ = number_run
    with safe_open(str(run.dir / "model.safetensors"), "pt") as fh:
        raw = json.loads(fh.metadata()["imgclass"])
    for change, says in ((dict(target_std=0), "target_std"), (dict(target_mean="x"), "target_mean"),
                         (dict(name="ordinal"), "no label structure")):
        broken = {**raw, "task": {**raw["task"], **change}}
        with pytest.raises(UserError, match=says):
            ModelHeader.from_dict(broken, "m.safetensors")
    with pytest.raises(UserError, match="one number"):
        ModelHeader.from_dict({**raw, "classes": ["a", "b"]}, "m.safetensors")


def test_compare_chooses_the_lowest_validation_mae(number_run, tmp_path, capsys):
    run, data, labels = number_run
    other = imgclass.train(data, labels=str(labels), label_column="target", regression=True, epochs=2,
                           out=str(tmp_path / "short"), **{**SMALL, "evaluate": True})
    assert main(["compare", str(run.dir), str(other.dir)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "val MAE" in header and "test R²" in header and "val accuracy" not in header
    best = min((run, other), key=lambda r: r.metrics["val"]["mae"])
    assert f"favours {best.dir} on validation MAE" in out


@pytest.mark.slow  # a time budget's planning: measured steps, then the epochs that fit
def test_a_time_budget_plans_a_number_per_image(tmp_path):
    data, labels = make_numbered_folder(tmp_path, n=200, split_column=True)
    run = imgclass.train(data, labels=str(labels), label_column="target", regression=True, time_budget="40s",
                         out=str(tmp_path / "run"), verbose=False, tensorboard=False, workers=1)
    results = json.loads((run.dir / "results.json").read_text())
    m = run.evaluations["test"].metrics
    assert results["time_budget"] == "40s" and results["epochs_run"] >= 1 and run.task.name == "regression"
    assert m["mae"] < m["baseline_mae"]


def test_the_task_sets_its_defaults_where_the_user_chose_none(tmp_path):
    """A number describes the whole image: resized whole (stretch), and answered as the mean over the image and its
    mirror (flip TTA) where images may be flipped; an option the user gives wins."""
    from imgclass.training.plan import plan_run
    data, labels = make_numbered_folder(tmp_path, n=40)
    plan = plan_run(data, labels=str(labels), regression=True, model="cnn")
    assert (plan.cfg.resize, plan.cfg.tta) == ("stretch", "flip")
    assert any("resized whole" in n and "--tta flip" in n for n in plan.notes)
    assert plan_run(data, labels=str(labels), regression=True, model="cnn", hflip=False).cfg.tta == "none"
    mine = plan_run(data, labels=str(labels), regression=True, model="cnn", resize="pad", tta="none")
    assert (mine.cfg.resize, mine.cfg.tta) == ("pad", "none") and not any("resized whole" in n for n in mine.notes)
    classes = plan_run(data, labels=str(labels), model="cnn", label_column="target")   # the numbers as classes
    assert (classes.cfg.resize, classes.cfg.tta) == ("crop", "none")
    assert plan.cfg.unfreeze == "gradual" and not any("--unfreeze" in n for n in plan.notes)  # nothing to fine-tune


def test_a_fine_tuned_number_unfreezes_the_whole_backbone_unless_told(tmp_path):
    """Fine-tuning a backbone for a number per image unfreezes every group from the start (the mall set: 2.18 test
    MAE against 2.21-2.24 with gradual unfreezing); --unfreeze given wins; one class keeps gradual unfreezing."""
    from imgclass.training.plan import plan_run
    data, labels = make_numbered_folder(tmp_path, n=40)
    tuned = dict(labels=str(labels), model="timm:tf_efficientnet_lite0", pretrained=True, img_size=32)
    plan = plan_run(data, regression=True, **tuned)
    assert plan.cfg.unfreeze == "all" and any("--unfreeze all" in n for n in plan.notes)
    assert plan_run(data, regression=True, unfreeze="gradual", **tuned).cfg.unfreeze == "gradual"
    assert plan_run(data, label_column="target", **tuned).cfg.unfreeze == "gradual"


@pytest.mark.slow  # two tune trials
def test_tune_minimises_the_validation_mae(tmp_path, capsys):
    """tune maximises the validation score, which for a number per image is minus its MAE: the best trial is the
    one with the lowest validation MAE."""
    import optuna
    import yaml
    data, labels = make_numbered_folder(tmp_path, n=80, split_column=True)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["tune", str(data), "--labels", str(labels), "--label-column", "target", "--regression", "--trials",
                 "2", "--space", str(space), "--storage", storage, "--out", str(tmp_path / "tune"), "--model", "cnn",
                 "--model-args", "width=8,depth=2", "--img-size", "16", "--epochs", "2", "--workers", "1",
                 "--no-evaluate"]) == 0
    study = optuna.load_study(study_name="imgclass", storage=storage)
    maes = [-t.value for t in study.trials]
    assert all(m > 0 for m in maes) and -study.best_value == pytest.approx(min(maes))


def test_the_top_stage_is_not_offered_to_a_number_per_image(tmp_path):
    """It over-fitted there (models/tasks/numbers.py); --finetune top is refused in one line, and auto never picks it."""
    from imgclass.training.stages.top_stage import settings_reason
    from imgclass.models.tasks import Regression
    from imgclass.training.config import TrainConfig
    assert "over-fits a number per image" in settings_reason(TrainConfig(), True, 1, False, Regression())
    data, labels = make_numbered_folder(tmp_path, n=40)
    with pytest.raises(UserError, match="--finetune top: the top stage"):
        imgclass.train(data, labels=str(labels), regression=True, finetune="top", pretrained=True,
                       model="timm:tf_efficientnet_lite0", out=str(tmp_path / "run"), verbose=False)
