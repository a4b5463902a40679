"""Every number in metrics.json equals what scikit-learn computes from predictions.csv."""
import csv
import json
import shutil

import numpy as np
import pytest
from sklearn import metrics as skm

import imgclass
from imgclass.cli import main
from imgclass.evaluation.metrics import compute_metrics, expected_calibration_error
from imgclass.evaluation.report import TLDR_WORD_LIMIT, RunContext, tldr

from helpers import FAST, make_class_folders

FIGURES = ["training_curves", "confusion_matrix", "confusion_matrix_normalized", "roc_curves", "pr_curves",
           "f1_per_class", "reliability", "reliability_uncalibrated", "gallery_confident_correct",
           "gallery_least_confident", "gallery_top_losses"]  # reliability_uncalibrated: the run is calibrated


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    data = make_class_folders(root / "data", classes=("a", "b", "c", "d"), per_class=20)
    # 1 epoch of a tiny model: imperfect predictions, so every metric has something to measure
    run = imgclass.train(data, out=str(root / "run"), **dict(FAST, epochs=1, evaluate=True, lr=3e-4))
    return run


def read_predictions(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = [k[len("prob_"):] for k in rows[0] if k.startswith("prob_")]
    y = np.array([classes.index(r["label"]) for r in rows])
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    return rows, classes, y, probs


def test_train_writes_val_and_test_evaluations(evaluated_run):
    for split in ("val", "test"):
        d = evaluated_run.dir / "eval" / split
        assert (d / "metrics.json").is_file() and (d / "predictions.csv").is_file()
        assert (d / "report.html").stat().st_size > 10_000 and (d / "report.md").is_file()
    assert set(evaluated_run.evaluations) == {"val", "test"}


def test_metrics_equal_sklearn_from_predictions_csv(evaluated_run):
    d = evaluated_run.dir / "eval" / "test"
    m = json.loads((d / "metrics.json").read_text())
    rows, classes, y, probs = read_predictions(d / "predictions.csv")
    assert list(rows[0])[:4] == ["path", "label", "prediction", "confidence"]
    assert m["classes"] == classes == ["a", "b", "c", "d"] and m["split"] == "test" and m["n"] == len(y)
    pred = probs.argmax(1)
    assert [classes[p] for p in pred] == [r["prediction"] for r in rows]
    labels = list(range(len(classes)))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted", labels=labels, zero_division=0))
    assert m["top3_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=3, labels=labels))
    assert "top5_accuracy" not in m   # only 4 classes
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i, c in enumerate(classes):
        assert m["per_class"][c] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    assert m["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-9)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=labels), rel=1e-6)
    assert m["ece"] == pytest.approx(expected_calibration_error(y, probs), abs=1e-9)


def test_ece_reference_values():
    # two bins' worth by hand: conf 0.9 right, 0.9 wrong, 0.6 right, 0.6 right -> |0.5-0.9|/2 + |1-0.6|/2
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    assert expected_calibration_error(y, probs) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_every_figure_exists_and_is_not_empty(evaluated_run):
    from PIL import Image
    d = evaluated_run.dir / "eval" / "test" / "figures"
    for name in FIGURES:
        img = np.asarray(Image.open(d / f"{name}.png").convert("L"))
        assert img.shape[0] > 100 and img.std() > 5, name   # something is drawn, not a blank canvas
    html = (evaluated_run.dir / "eval" / "test" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)
    assert "src='http" not in html and 'src="http' not in html   # no external assets


def tldr_words(report_md: str) -> int:
    section = report_md.split("## TL;DR", 1)[1].split("\n## ", 1)[0]
    return len(section.split())


def test_tldr_within_500_words_and_from_numbers(evaluated_run):
    md = (evaluated_run.dir / "eval" / "test" / "report.md").read_text()
    assert 50 < tldr_words(md) <= TLDR_WORD_LIMIT
    m = evaluated_run.evaluations["test"].metrics
    assert f"macro F1 {m['macro_f1']:.3f}" in md and "**Diagnosis.**" in md


def test_tldr_limit_holds_for_many_classes():
    rng = np.random.RandomState(0)
    classes = [f"class_with_a_long_name_{i}" for i in range(200)]
    y = np.arange(400) % 200
    probs = rng.dirichlet(np.ones(200), size=400)
    m, notes = compute_metrics(y, probs, classes, "test")
    ctx = RunContext(split_counts={"train": {c: 5 + i for i, c in enumerate(classes)}},
                     results={"metrics": {"train": {"accuracy": 0.99}, "val": {"accuracy": 0.2}}})
    words = sum(len(p.split()) for p in tldr(m, notes + ["x " * 600], ctx))
    assert words <= TLDR_WORD_LIMIT


def test_class_missing_from_split_stays_defined(tmp_path):
    data = make_split_folders_missing_class(tmp_path)
    run = imgclass.train(data, out=str(tmp_path / "run"), **dict(FAST, epochs=1))
    ev = imgclass.evaluate(run.dir, split="test")
    m = ev.metrics
    assert m["per_class"]["c"]["support"] == 0 and m["roc_auc_per_class"]["c"] is None
    assert m["roc_auc_macro"] is not None and np.isfinite(m["log_loss"])
    assert any("no image in the test split" in n for n in ev.notes)
    assert "no image in the test split" in (ev.dir / "report.md").read_text()


def make_split_folders_missing_class(tmp_path):
    from helpers import make_split_folders
    data = make_split_folders(tmp_path / "data", splits=("train", "val", "test"))
    shutil.rmtree(data / "test" / "c")
    return data


def test_evaluate_cli_other_folder_and_compare(evaluated_run, tmp_path, capsys):
    other = make_class_folders(tmp_path / "other", classes=("a", "b"), per_class=5, seed=3)
    (other / "a" / "broken.jpg").write_text("nope")
    assert main(["evaluate", str(evaluated_run.dir / "model.safetensors"), str(other), "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "unreadable 1" in out
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["n"] == 10 and m["unreadable"][0]["path"] == "a/broken.jpg"
    assert main(["evaluate", str(evaluated_run.dir), str(make_class_folders(tmp_path / "x", classes=("zebra", "a"),
                                                                            per_class=2))]) == 2
    assert "unknown to the model" in capsys.readouterr().err

    assert main(["compare", str(evaluated_run.dir), str(evaluated_run.dir), "--html", str(tmp_path / "c.html")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["run", "model"] and len(table) == 4
    assert table[3].startswith("no verdict: ") and "tie on validation accuracy" in table[3]  # the same run twice
    test_acc = evaluated_run.metrics["test"]["accuracy"]
    assert f"{test_acc:.4f}" in table[1] and "cnn" in table[1]
    assert (tmp_path / "c.html").read_text().count("<tr>") == 3


def test_evaluate_another_folder_from_a_labels_csv(evaluated_run, tmp_path):
    """Another folder whose classes are in a CSV (flat files, Kaggle's trainLabels.csv layout): the run's test
    images copied out score what the run's own test evaluation scored."""
    from pathlib import Path
    rows = list(csv.DictReader(open(evaluated_run.dir / "eval" / "test" / "predictions.csv")))
    data = Path(imgclass.training.config.resolve(evaluated_run.dir / "config.yaml").data)
    (tmp_path / "flat").mkdir()
    lines = ["id,label"]
    for i, row in enumerate(rows):
        shutil.copyfile(data / row["path"], tmp_path / "flat" / f"{i}.png")
        lines.append(f"{i},{row['label']}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    assert main(["evaluate", str(evaluated_run.dir), str(tmp_path / "flat"), "--labels", str(tmp_path / "labels.csv"),
                 "--out", str(tmp_path / "e"), "--runtime", "torch", "--precision", "float32"]) == 0  # as trained
    got = json.loads((tmp_path / "e" / "metrics.json").read_text())
    own = json.loads((evaluated_run.dir / "eval" / "test" / "metrics.json").read_text())
    assert got["n"] == own["n"] == len(rows) and got["accuracy"] == pytest.approx(own["accuracy"], abs=1e-9)
    assert main(["evaluate", str(evaluated_run.dir), str(tmp_path / "flat"), "--labels", str(tmp_path / "labels.csv"),
                 "--tag-columns", "a:b"]) == 2


def _rows_of(fig):
    """(row label, captions under its images) of a per-class gallery figure."""
    axes = fig.axes
    cols = len([a for a in axes if abs(a.get_position().y0 - axes[0].get_position().y0) < 1e-6])
    grid = [axes[i:i + cols] for i in range(0, len(axes), cols)]
    return [(row[0].get_ylabel(), [a.get_xlabel() for a in row if a.images]) for row in grid]


def test_galleries_ask_the_three_questions_per_class():
    import numpy as np
    import torch
    from imgclass.evaluation.classes import GALLERY_MAX_CLASSES, gallery_sets as _gallery_sets
    classes = ["ant", "bee", "cat"]
    y = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array([[.9, .05, .05], [.6, .3, .1], [.2, .7, .1],   # ant: right 0.9, right 0.6, wrong (bee 0.7)
                      [.1, .8, .1], [.5, .4, .1],                     # bee: right 0.8, wrong (ant 0.5)
                      [.1, .1, .8]])                                  # cat: right 0.8
    images = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    figs = _gallery_sets(images, y, probs, classes)
    assert _rows_of(figs["gallery_confident_correct"]) == [("ant", ["ant 0.90", "ant 0.60"]), ("bee", ["bee 0.80"]),
                                                           ("cat", ["cat 0.80"])]
    assert _rows_of(figs["gallery_top_losses"]) == [("ant", ["bee 0.70"]), ("bee", ["ant 0.50"]), ("cat", [])]
    assert _rows_of(figs["gallery_least_confident"])[0] == ("ant", ["ant 0.60", "bee 0.70", "ant 0.90"])
    # many classes: one row each for the classes with the lowest recall, in class order
    n = GALLERY_MAX_CLASSES + 5
    y = np.repeat(np.arange(n), 2)
    probs = np.eye(n)[y] * 0.9 + 0.1 / n
    wrong = [3, 7]                                        # these classes' second image is predicted as class 0
    for c in wrong:
        probs[2 * c + 1] = np.eye(n)[0] * 0.9 + 0.1 / n
    names = [f"c{i:02d}" for i in range(n)]
    figs = _gallery_sets(torch.zeros(2 * n, 3, 8, 8, dtype=torch.uint8), y, probs, names)
    rows = [label for label, _ in _rows_of(figs["gallery_top_losses"])]
    assert len(rows) == GALLERY_MAX_CLASSES and {"c03", "c07"} <= set(rows) and rows == sorted(rows)
    assert "20 of 25 classes" in figs["gallery_top_losses"]._suptitle.get_text()


def test_a_kill_during_evaluation_leaves_no_folder_that_looks_evaluated(tmp_path, monkeypatch):
    """metrics.json (what compare and the model card read) is removed when an evaluation starts and written last:
    an evaluation killed half-way (here: while writing its report) leaves a folder without it, never one mixing
    two evaluations or lacking its report; `evaluate` then redoes it."""
    import dataclasses
    from imgclass.evaluation import tasks
    data = make_class_folders(tmp_path / "data", per_class=10)
    run = imgclass.train(data, out=str(tmp_path / "run"), **dict(FAST, epochs=1, evaluate=True))
    test_dir = run.dir / "eval" / "test"
    assert (test_dir / "metrics.json").is_file()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what a kill leaves: everything written before this point, nothing after
    monkeypatch.setitem(tasks.EVALUATIONS, "single-label",
                        dataclasses.replace(tasks.EVALUATIONS["single-label"], write_report=killed))
    with pytest.raises(KeyboardInterrupt):
        imgclass.evaluate(run.dir)
    assert not (test_dir / "metrics.json").exists()
    assert not list(test_dir.rglob("*.tmp"))
    monkeypatch.undo()
    assert main(["compare", str(run.dir)]) == 0                      # the run without a test evaluation
    imgclass.evaluate(run.dir)
    assert (test_dir / "metrics.json").is_file() and (test_dir / "report.html").is_file()


@pytest.mark.parametrize("results,planned,expected", [
    ({"epochs_run": 10, "stop_reason": ""}, 10, "the planned epochs completed"),
    ({"epochs_run": 4, "stop_reason": "time budget reached", "time_budget": "15m"}, 4,
     "on plan: the time budget's deadline came in the last planned epoch (15m)"),
    ({"epochs_run": 3, "stop_reason": "time budget reached", "time_budget": "5m"}, 6,
     "the time budget (5m) ended it after 3 of 6 planned epochs"),
    ({"epochs_run": 7, "stop_reason": "early stopping: no validation-accuracy gain for 3 epochs"}, 20,
     "stopped early: no validation-accuracy gain for 3 epochs"),
    ({"epochs_run": 2, "stop_reason": "pruned by Optuna"}, 10, "pruned by Optuna"),
    ({"epochs_run": 15, "stop_reason": "time budget: 15 of 17 planned epochs fit", "time_budget": "15m"}, 15,
     "15 of 17 planned epochs fit in the time budget (15m); the schedule ended with them"),
])
def test_the_report_says_how_the_run_ended(results, planned, expected):
    """A budget run that ended on plan is not "stopped early" (issue 28, item 5)."""
    from imgclass.evaluation.report import run_ending
    assert run_ending(results, {"epochs": planned}) == expected


@pytest.mark.parametrize("weights,budget", [(None, None), ({"dataset": "ImageNet-1k"}, "5m")])
def test_the_report_advises_only_what_the_run_has_not_done(weights, budget):
    """Few images per class: a run from scratch is told to start from a pretrained backbone, a fine-tuned one is
    not; under-fitting under a time budget asks for a longer budget, not more --epochs."""
    from types import SimpleNamespace

    from imgclass.evaluation.report import RunContext, _diagnosis_paragraphs
    ctx = RunContext(results={"time_budget": budget}, split_counts={"train": {"a": 20, "b": 30}},
                     header=SimpleNamespace(weights=weights))
    metrics = {"most_confused": [], "ece": 0.01, "mean_confidence": 0.8, "accuracy": 0.8}
    text = " ".join(_diagnosis_paragraphs(metrics, [], ctx, {"train": 0.7, "val": 0.68}))
    assert "under-fitting" in text and "little data" in text
    assert ("pretrained backbone" in text) == (weights is None)
    assert ("--time-budget" in text) == (budget is not None) and ("--epochs" in text) == (budget is None)


def test_evaluate_adds_a_map_of_the_embeddings_when_asked(trained_run, tmp_path):
    assert main(["evaluate", str(trained_run), "--split", "val", "--out", str(tmp_path / "ev"), "--map",
                 "--runtime", "torch"]) == 0
    assert (tmp_path / "ev" / "figures" / "data_map.png").read_bytes()[:4] == b"\x89PNG"
    assert "data map" in (tmp_path / "ev" / "report.md").read_text()
    plain = imgclass.evaluate(trained_run, split="val", out=tmp_path / "plain", runtime="torch")
    assert "data_map" not in plain.figures


def test_the_map_marks_what_predict_reject_rejects(trained_run, tmp_path, monkeypatch):
    """evaluate --map marks the images predict --reject answers 'unknown' (the k-NN rule, through Rejection.decide);
    it once compared the highest probability with the k-NN rule's cosine threshold (issue 39)."""
    import dataclasses
    from imgclass.evaluation import plots
    from imgclass.models.modelfile import load_model, save_model
    with open(trained_run / "splits.csv", newline="") as fh:
        val = [trained_run.parent / "data" / r["path"] for r in csv.DictReader(fh) if r["split"] == "val"]
    scores = np.array([a["score"] for a in imgclass.predict(trained_run, val, reject=True, runtime="torch",
                                                               precision="float32")])
    model, header = load_model(trained_run / "model.safetensors")
    threshold = float(np.median(scores))  # about half rejected: a rule on the highest probability marks others
    strict = tmp_path / "run" / "model.safetensors"
    strict.parent.mkdir()
    shutil.copy(trained_run / "splits.csv", strict.parent / "splits.csv")
    shutil.copy(trained_run / "config.yaml", strict.parent / "config.yaml")
    save_model(strict, model, dataclasses.replace(header, reject=dataclasses.replace(header.reject,
                                                                                   threshold=threshold)))
    seen = {}
    real = plots.data_map
    monkeypatch.setattr(plots, "data_map", lambda feats, y, classes, marked: seen.update(marked) or
                        real(feats, y, classes, marked))
    evaluation = imgclass.evaluate(strict, data=trained_run.parent / "data", split="val", out=tmp_path / "ev",
                                   data_map=True, runtime="torch", precision="float32")
    rows = list(csv.DictReader(open(evaluation.dir / "predictions.csv", newline="")))
    by_path = {p.relative_to(trained_run.parent / "data").as_posix(): s for p, s in zip(val, scores)}
    marked = {rows[i]["path"] for i in seen["rejected (--reject)"]}
    clear = 2e-3  # a k-NN score recomputed at another batch size (tests/prediction/test_reject.py)
    assert {p for p, s in by_path.items() if s < threshold - clear} <= marked
    assert not {p for p, s in by_path.items() if s > threshold + clear} & marked
