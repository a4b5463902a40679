"""Several tags per image, end to end (issue 26, in part): thresholds that must beat 0.5, metrics equal to
scikit-learn's recomputed from predictions.csv, and every command on a trained model."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import imgclass
from imgclass.cli import main
from imgclass.core.errors import UserError
from imgclass.models.modelfile import read_header, read_onnx_header
from imgclass.models.tasks import MultiLabel

from helpers import FAST, assert_same_answers, local_client, make_tagged_folder

TAGS = ("dot", "red", "stripe")


@pytest.fixture(scope="module")
def tagged_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tags")
    data, labels = make_tagged_folder(root)
    run = imgclass.train(data, labels=str(labels), multi_label=True, model="cnn", model_args={"width": 8, "depth": 2},
                         img_size=16, epochs=12, batch_size=16, hflip=False, out=str(root / "run"), verbose=False,
                         tensorboard=False, workers=1)
    return run, data


def test_thresholds_chosen_on_validation_beat_one_half_where_they_must():
    """Positives of each tag score 0.30-0.45 and negatives 0-0.25: at 0.5 nothing is tagged (F1 0); the chosen
    thresholds separate them (F1 1)."""
    rng = np.random.RandomState(0)
    labels = (rng.rand(200, 3) < [0.2, 0.5, 0.1]).astype(int)
    probs = np.where(labels == 1, rng.uniform(0.30, 0.45, labels.shape), rng.uniform(0.0, 0.25, labels.shape))
    said = []
    task = MultiLabel().fitted(probs, labels, lambda m, warning=False: said.append(m))
    assert all(0.25 < t < 0.45 for t in task.thresholds) and said == []   # between the negatives and positives
    f1 = lambda decided: skm.f1_score(labels, decided, average="macro", zero_division=0)  # noqa: E731
    assert f1(task.decisions(probs)) > 0.95 and f1(probs >= 0.5) == 0.0
    for j in range(3):                                               # the stored F1 is scikit-learn's at the cut
        assert task.threshold_f1[j] == pytest.approx(skm.f1_score(labels[:, j], probs[:, j] >= task.thresholds[j]))
    labels[:, 2] = 0                                                 # a tag without positives keeps 0.5
    task = MultiLabel().fitted(probs, labels, lambda m, warning=False: said.append(m))
    assert task.thresholds[2] == 0.5 and said and "keep the threshold 0.5" in said[0]


def test_a_tagged_run_learns_stores_its_thresholds_and_scores_like_sklearn(tagged_run):
    run, _ = tagged_run
    header = read_header(run.dir / "model.safetensors")
    assert header.task.name == "multi-label" and header.format_version == 2
    raw = json.loads(__import__("safetensors").safe_open(str(run.dir / "model.safetensors"), "pt").metadata()["imgclass"])
    assert raw["format_version"] == 2 and raw["hierarchy"] is None and len(raw["task"]["thresholds"]) == 3
    # the thresholds are the F1-best cut of each tag on validation, recomputed from its predictions.csv: chosen on
    # the probabilities before calibration, then moved with them (Platt's a > 0: no decision changes)
    task = header.task
    assert task.calibration_scale is not None and all(a > 0 for a in task.calibration_scale)
    val = list(csv.DictReader(open(run.dir / "eval" / "val" / "predictions.csv")))
    y_val = np.array([[t in json.loads(r["labels"]) for t in TAGS] for r in val], dtype=int)
    p_val = np.array([[float(r[f"prob_{t}"]) for t in TAGS] for r in val])
    chosen = MultiLabel().fitted(task.uncalibrated(p_val), y_val, lambda *a, **k: None)
    expected = chosen.calibrated(task.calibration_scale, task.calibration_shift).thresholds
    assert np.allclose(task.thresholds, expected, atol=1e-6)
    assert np.array_equal(chosen.decisions(task.uncalibrated(p_val)), task.decisions(p_val))
    # every number of metrics.json equals scikit-learn's on predictions.csv
    m = json.loads((run.dir / "eval" / "test" / "metrics.json").read_text())
    rows = list(csv.DictReader(open(run.dir / "eval" / "test" / "predictions.csv")))
    y = np.array([[t in json.loads(r["labels"]) for t in TAGS] for r in rows], dtype=int)
    p = np.array([[float(r[f"prob_{t}"]) for t in TAGS] for r in rows])
    given = np.array([[t in json.loads(r["predicted"]) for t in TAGS] for r in rows])
    assert np.array_equal(given, p >= np.array(header.task.thresholds))
    present = y.sum(0) > 0
    assert m["map"] == pytest.approx(skm.average_precision_score(y[:, present], p[:, present], average="macro"))
    assert m["micro_ap"] == pytest.approx(skm.average_precision_score(y, p, average="micro"))
    assert m["label_ranking_average_precision"] == pytest.approx(skm.label_ranking_average_precision_score(y, p))
    assert m["coverage_error"] == pytest.approx(skm.coverage_error(y, p))
    for key, decided in (("at_thresholds", given), ("at_0.5", p >= 0.5)):
        assert m[key]["macro_f1"] == pytest.approx(skm.f1_score(y, decided, average="macro", zero_division=0,
                                                                labels=np.flatnonzero(present)))
        assert m[key]["samples_f1"] == pytest.approx(skm.f1_score(y, decided, average="samples", zero_division=0))
        assert m[key]["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, decided))
        assert m[key]["hamming_loss"] == pytest.approx(skm.hamming_loss(y, decided))
    from imgclass.evaluation.metrics import expected_calibration_error
    raw = task.uncalibrated(p)
    for j, t in enumerate(TAGS):
        if present[j]:
            assert m["per_tag"][t]["ap"] == pytest.approx(skm.average_precision_score(y[:, j], p[:, j]))
            # calibration keeps each tag's ranking
            assert m["per_tag"][t]["ap"] == pytest.approx(skm.average_precision_score(y[:, j], raw[:, j]))
        assert m["per_tag"][t]["ece"] == pytest.approx(expected_calibration_error(y[:, j], np.stack([1 - p[:, j], p[:, j]], 1)))
        assert m["per_tag"][t]["ece_uncalibrated"] == pytest.approx(
            expected_calibration_error(y[:, j], np.stack([1 - raw[:, j], raw[:, j]], 1)))
    results = json.loads((run.dir / "results.json").read_text())
    assert results["calibration"]["method"] == "platt" and results["calibration"]["tags_fitted"] == 3
    assert results["calibration"]["val_ece_after"] < results["calibration"]["val_ece_before"]
    figures = {f.stem for f in (run.dir / "eval" / "test" / "figures").iterdir()}
    assert {"pr_curves_tags", "ap_vs_frequency", "f1_per_tag", "f1_vs_threshold", "co_occurrence",
            "gallery_false_positives", "gallery_false_negatives"} <= figures
    assert m["map"] > 0.8                                           # the tags are visible: it has learnt them
    assert (run.dir / "eval" / "test" / "report.html").stat().st_size > 10_000
    assert "mAP" in (run.dir / "eval" / "test" / "report.md").read_text()


def test_every_command_on_a_tagged_model(tagged_run, tmp_path, capsys):
    run, data = tagged_run
    image = str(data / "im0.png")
    assert main(["predict", str(run.dir), image, "--format", "json", "--runtime", "torch", "--precision",
                 "float32"]) == 0
    answer = json.loads(capsys.readouterr().out)[0]
    probs = {t["label"]: t["probability"] for t in answer["top_k"]}
    thresholds = dict(zip(TAGS, read_header(run.dir / "model.safetensors").task.thresholds))
    assert [t["label"] for t in answer["labels"]] == [t for t in sorted(probs, key=lambda t: -probs[t])
                                                      if probs[t] >= thresholds[t]]
    assert main(["submit", str(run.dir), str(data), "--out", str(tmp_path / "tags.csv"), "--target", "label"]) == 0
    assert main(["submit", str(run.dir), str(data), "--out", str(tmp_path / "onehot.csv"), "--format", "onehot"]) == 0
    tags = list(csv.reader(open(tmp_path / "tags.csv")))
    onehot = list(csv.reader(open(tmp_path / "onehot.csv")))
    assert tags[0] == ["ID", "TARGET"] and onehot[0] == ["ID", *TAGS] and len(tags) == len(onehot) == 91
    for a, b in zip(tags[1:], onehot[1:]):
        assert set(a[1].split()) == {t for t, v in zip(TAGS, b[1:]) if v == "1"}
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(run.dir), "--out", str(onnx_file)]) == 0
    assert read_onnx_header(onnx_file).task == read_header(run.dir / "model.safetensors").task
    import onnxruntime as ort
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    got = ort.InferenceSession(str(onnx_file)).run(None, {"pixels": x.float().numpy()})[0]
    want = imgclass.load(run.dir, device="cpu").probabilities(x).numpy()
    assert np.allclose(got, want, atol=1e-4) and not np.allclose(got.sum(1), 1.0)   # a sigmoid per tag, inside
    from imgclass.serving.app import create_app
    client = local_client(create_app(run.dir, runtime="torch", precision="float32"))
    served = client.post("/predict", files={"file": ("x.png", open(image, "rb").read(), "image/png")}).json()
    assert_same_answers([served["labels"], served["top_k"]], [answer["labels"], answer["top_k"]])
    blob = open(image, "rb").read()   # the heatmap's model is the float32 one: the probability predict gave above
    heat = client.post("/explain?label=stripe&format=json", files={"file": ("x.png", blob, "image/png")}).json()
    assert heat["label"] == "stripe" and heat["probability"] == pytest.approx(probs["stripe"], abs=1e-5)
    assert client.post("/explain?label=nope", files={"file": ("x.png", blob, "image/png")}).status_code == 400
    by_tag = client.post("/explain?tag=red&format=json", files={"file": ("x.png", blob, "image/png")}).json()
    assert by_tag["label"] == "red" and by_tag["probability"] == pytest.approx(probs["red"], abs=1e-5)
    assert client.post("/explain?tag=red&label=dot", files={"file": ("x.png", blob, "image/png")}).status_code == 400
    assert main(["evaluate", str(run.dir), "--split", "val", "--out", str(tmp_path / "ev")]) == 0
    assert "mAP" in capsys.readouterr().out
    assert main(["compare", str(run.dir)]) == 0
    assert main(["export", str(run.dir), "--format", "hub", "--out", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "| mAP |" in card and "| tag | AP | threshold |" in card
    assert "Tag an image with any number of: dot, red, stripe" in card and "Platt scaling per tag" in card
    assert "Softmax temperature" not in card
    hub_config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert hub_config["task"] == read_header(run.dir / "model.safetensors").task.task_entry()
    assert main(["explain", str(run.dir), image, "--class", "red", "--out", str(tmp_path / "ex")]) == 0
    assert (tmp_path / "ex" / "im0.png").is_file()


def test_options_a_tagged_run_refuses_and_mixup_it_takes(tmp_path):
    data, labels = make_tagged_folder(tmp_path)
    run = imgclass.train(data, labels=str(labels), multi_label=True, model="cnn", model_args={"width": 8, "depth": 2},
                         img_size=16, epochs=2, batch_size=16, mixup=0.4, cutmix=1.0, out=str(tmp_path / "mixed"),
                         verbose=False, tensorboard=False, evaluate=False, workers=1)
    assert all(np.isfinite(r["train_loss"]) for r in run.history) and 0 <= run.metrics["val"]["map"] <= 1
    for option, message in (({"balanced_sampler": True}, "class-weights auto"),
                            ({"hierarchy": True}, "exclude each other")):
        with pytest.raises(UserError, match=message):
            imgclass.train(data, labels=str(labels), multi_label=True, model="cnn", epochs=1, out=str(tmp_path / "x"),
                           **option)


def test_an_interrupted_tagged_run_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file
    from imgclass.training.loop.fit import Callback

    class Interrupt(Callback):
        order = 10

        def after_epoch(self, t):
            if t.epoch == 2:
                raise KeyboardInterrupt
    data, labels = make_tagged_folder(tmp_path, n=60)
    options = dict(labels=str(labels), multi_label=True, model="cnn", model_args={"width": 8, "depth": 2},
                   img_size=16, epochs=4, batch_size=16, hflip=False, verbose=False, tensorboard=False, workers=1,
                   evaluate=False)
    with pytest.raises(KeyboardInterrupt):
        imgclass.train(data, out=str(tmp_path / "a"), callbacks=[Interrupt()], **options)
    resumed = imgclass.train(resume=str(tmp_path / "a"))
    whole = imgclass.train(data, out=str(tmp_path / "b"), **options)
    a, b = load_file(str(resumed.model_path)), load_file(str(whole.model_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)     # same process, same kernels
    assert read_header(resumed.model_path).task == read_header(whole.model_path).task   # the same thresholds


def test_tune_scores_tagged_trials_by_validation_map_and_folds_stratify_per_tag(tmp_path, capsys):
    import csv as csv_module

    import optuna
    import yaml
    data, labels = make_tagged_folder(tmp_path, n=60)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"lr": {"type": "categorical", "choices": [3e-3]}}))
    out = tmp_path / "tune"
    assert main(["tune", str(data), "--labels", str(labels), "--multi-label", "--trials", "1", "--cv", "2",
                 "--space", str(space), "--out", str(out), "--model", "cnn", "--model-args", "width=8,depth=2",
                 "--img-size", "16", "--epochs", "2", "--batch-size", "16", "--no-hflip", "--no-tensorboard",
                 "--no-verbose", "--workers", "1", "--no-evaluate"]) == 0
    assert "best validation score" in capsys.readouterr().out
    trial = optuna.load_study(study_name="imgclass", storage=f"sqlite:///{(out / 'study.db').resolve()}").trials[0]
    folds = [max(float(r["val_acc"]) for r in csv_module.DictReader(open(out / "trial-0" / f"fold-{i}" / "metrics.csv")))
             for i in range(2)]
    assert trial.value == pytest.approx(sum(folds) / 2)             # the mean of the folds' best validation mAP
    for i in range(2):
        assert read_header(out / "trial-0" / f"fold-{i}" / "model.safetensors").task.name == "multi-label"


def test_evaluate_another_folder_of_tag_folders(tagged_run, tmp_path, capsys):
    """DATA/<tag>/*: an image copied into each of its tags' folders is evaluated once, with all its tags."""
    import shutil
    run, data = tagged_run
    rows = list(csv.DictReader(open(run.dir / "eval" / "test" / "predictions.csv")))
    other = tmp_path / "other"
    for row in rows:
        for tag in json.loads(row["labels"]) or ["red"]:
            (other / tag).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data / row["path"], other / tag / Path(row["path"]).name)
    assert main(["evaluate", str(run.dir), str(other), "--out", str(tmp_path / "ev"), "--runtime", "torch",
                 "--precision", "float32"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n"] == len(rows) and m["task"] == "multi-label"
    truth = {Path(r["path"]).name: set(json.loads(r["labels"]) or ["red"]) for r in rows}
    for r in csv.DictReader(open(tmp_path / "ev" / "predictions.csv")):
        assert set(json.loads(r["labels"])) == truth[Path(r["path"]).name]


def test_evaluate_another_folder_from_a_tags_csv(tagged_run, tmp_path):
    """Another folder's tags from a CSV (here one 0/1 column per tag, the Kaggle layout): the test split's images
    copied out and described so score what the run's own test evaluation scored."""
    import shutil
    run, data = tagged_run
    rows = list(csv.DictReader(open(run.dir / "eval" / "test" / "predictions.csv")))
    (tmp_path / "other").mkdir()
    lines = ["image," + ",".join(TAGS)]
    for row in rows:
        name = Path(row["path"]).name
        shutil.copyfile(data / row["path"], tmp_path / "other" / name)
        lines.append(name + "," + ",".join(str(int(t in json.loads(row["labels"]))) for t in TAGS))
    (tmp_path / "truth.csv").write_text("\n".join(lines) + "\n")
    assert main(["evaluate", str(run.dir), str(tmp_path / "other"), "--labels", str(tmp_path / "truth.csv"),
                 "--tag-columns", "dot:stripe", "--out", str(tmp_path / "ev"), "--runtime", "torch",
                 "--precision", "float32"]) == 0
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    own = json.loads((run.dir / "eval" / "test" / "metrics.json").read_text())
    assert got["n"] == own["n"] == len(rows)
    for key in ("map", "micro_ap", "coverage_error"):
        assert got[key] == pytest.approx(own[key], abs=1e-4), key
    assert main(["evaluate", str(run.dir), str(tmp_path / "other"), "--tag-columns", "dot:stripe"]) == 2
    with pytest.raises(UserError, match="give its DATA folder"):
        imgclass.evaluate(run.dir, labels=str(tmp_path / "truth.csv"))


def test_one_threshold_for_every_tag_overrides_the_chosen_ones(tmp_path):
    data, labels = make_tagged_folder(tmp_path, n=60)
    options = dict(labels=str(labels), multi_label=True, model="cnn", model_args={"width": 8, "depth": 2},
                   img_size=16, epochs=2, batch_size=16, hflip=False, verbose=False, tensorboard=False, workers=1)
    run = imgclass.train(data, out=str(tmp_path / "t"), threshold=0.3, **options)
    task = read_header(run.model_path).task
    assert task.thresholds == (0.3, 0.3, 0.3) and len(task.threshold_f1) == 3
    m = json.loads((run.dir / "eval" / "test" / "metrics.json").read_text())
    assert {v["threshold"] for v in m["per_tag"].values()} == {0.3}
    with pytest.raises(UserError, match="--threshold takes a probability"):
        imgclass.train(data, out=str(tmp_path / "bad"), threshold=1.5, **options)


def test_a_tag_with_no_training_image_is_left_out_and_the_run_completes(tmp_path, imgclass_log):
    """issue 40, item 17: a long-tailed tag set with its own split (a genre seen once in val and once in test, never
    in train) refused to train ("class(es) Reality-TV have no usable training image"). The tag is left out of the
    model with one note; its images stay, with their other tags."""
    data, labels = make_tagged_folder(tmp_path, n=60)
    rows = labels.read_text().splitlines()
    split = ["train"] * 40 + ["val"] * 10 + ["test"] * 10
    out = [rows[0] + ",split"]
    for i, (row, where) in enumerate(zip(rows[1:], split)):
        name, tags = row.split(",", 1)
        tags = tags.strip('"')
        if i in (45, 55):  # one val image and one test image carry the rare tag
            tags = ";".join(filter(None, [tags, "Reality-TV"]))
        out.append(f'{name},"{tags}",{where}')
    labels.write_text("\n".join(out) + "\n")
    run = imgclass.train(data, labels=str(labels), multi_label=True, out=str(tmp_path / "run"), **dict(FAST, epochs=1))
    assert "Reality-TV" not in run.classes and set(run.classes) == {"red", "stripe", "dot"}
    assert any("left out of the model" in m and "Reality-TV" in m for _, m in imgclass_log)
    splits = (run.dir / "splits.csv").read_text()
    assert splits.count("\n") - 1 == 60  # every image stays
    report = (run.dir / "eval" / "test" / "report.md")
    assert not report.exists() or "Reality-TV" in report.read_text()  # FAST skips evaluation; when run, it says so
    ev = imgclass.evaluate(run.dir, split="test", out=tmp_path / "ev")
    assert any("Reality-TV" in note for note in ev.notes)


def test_a_class_with_no_training_image_is_left_out_and_the_run_completes(tmp_path, imgclass_log):
    """issue 40, item 17, one class per image: a class found only in val and test leaves the run (its images too)."""
    from helpers import make_split_folders
    data = make_split_folders(tmp_path / "data", classes=("a", "b"))
    for split in ("val", "test"):
        (data / split / "rare").mkdir()
        (data / split / "rare" / "x.png").write_bytes((data / split / "a").iterdir().__next__().read_bytes())
    run = imgclass.train(data, out=str(tmp_path / "run"), **dict(FAST, epochs=1))
    assert run.classes == ["a", "b"]
    assert any("left out of the model" in m and "rare" in m and "2 val/test image(s)" in m for _, m in imgclass_log)


def test_macro_f1_and_map_average_the_same_tags():
    """issue 40, item 16: a tag with no positive image in the split was skipped by mAP but counted as 0 by macro F1;
    both now average the tags present (scikit-learn's numbers over those tags)."""
    from imgclass.evaluation.tags import tag_metrics
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probs = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.2], [0.7, 0.6, 0.3], [0.1, 0.1, 0.4]])
    m, notes = tag_metrics(y, probs, ["a", "b", "never"], np.full(3, 0.5), "test")
    decided = probs >= 0.5
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y[:, :2], decided[:, :2], average="macro"))
    assert m["macro_f1"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
    assert any("never" in n for n in notes)
