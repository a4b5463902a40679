"""Two-level labels (coarse -> fine): parsing, the three strategies, consistent decoding,
both-level metrics against scikit-learn, predict/submit levels, compare, check."""
import csv
import json

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import imgclass
from imgclass.cli import main
from imgclass.data.find import find_images
from imgclass.core.errors import DataError
from imgclass.models import create_model
from imgclass.models.hierarchy import Hierarchical, coarse_probabilities

from helpers import FAST, TREE, make_tree, tiny_image



def test_nested_folders_and_split_folders(tmp_path):
    found = find_images(make_tree(tmp_path / "a"), hierarchy=True)
    assert found.classes == ["cat", "dog", "fern", "moss", "oak"] and found.coarse_classes == ["animal", "plant"]
    assert found.parents == [0, 0, 1, 1, 1]
    found = find_images(make_tree(tmp_path / "b", splits=["train", "test"]), hierarchy=True)
    assert {s for _, _, s in found.items} == {"train", "test"} and found.parents == [0, 0, 1, 1, 1]


def test_csv_levels_and_duplicate_parent(tmp_path):
    root = make_tree(tmp_path / "d")
    rows = [(p.relative_to(root).as_posix(), p.parts[-3], p.parts[-2]) for p in sorted(root.rglob("*.png"))]
    meta = tmp_path / "metadata.csv"
    with meta.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file_path", "phylum", "family"])
        w.writerows(rows)
    found = find_images(root, meta, label_columns="phylum,family")
    assert found.coarse_classes == ["animal", "plant"] and found.parents == [0, 0, 1, 1, 1]
    assert len(found.items) == 60
    with meta.open("a", newline="") as fh:
        csv.writer(fh).writerow([rows[0][0], "plant", "cat"])  # 'cat' under a second parent
    with pytest.raises(DataError, match="fine class 'cat' appears under several coarse classes"):
        find_images(root, meta, label_columns="phylum,family")
    (root / "plant" / "cat").mkdir()
    tiny_image(0, np.random.RandomState(1)).save(root / "plant" / "cat" / "x.png")
    with pytest.raises(DataError, match="'cat'.*animal, plant"):
        find_images(root, hierarchy=True)


@pytest.mark.parametrize("strategy", ["two-stage", "multi-head"])
def test_joint_decoding_is_a_consistent_distribution(strategy):
    torch.manual_seed(0)
    fine = create_model("cnn", num_classes=5, width=4, depth=1)
    coarse = create_model("cnn", num_classes=2, width=4, depth=1) if strategy == "two-stage" else None
    model = Hierarchical(strategy, fine, [0, 0, 1, 1, 1], 2, coarse).eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
        fl, cl = model._levels(x)
    assert torch.allclose(p.sum(1), torch.ones(4), atol=1e-5)
    pc = torch.softmax(cl, 1)
    summed = torch.from_numpy(coarse_probabilities(p.numpy(), [0, 0, 1, 1, 1], 2))
    assert torch.allclose(summed, pc, atol=1e-5)       # the coarse head's own distribution is recovered
    within = torch.softmax(fl[:, 2:], 1)                # p(fine | plant) from the fine head alone
    assert torch.allclose(p[:, 2:] / p[:, 2:].sum(1, keepdim=True), within, atol=1e-5)


@pytest.fixture(scope="module")
def strategy_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("h")
    data = make_tree(root / "data", per_class=16)
    return data, {s: imgclass.train(data, out=str(root / s), hierarchy=True, hierarchy_strategy=s,
                                    **dict(FAST, epochs=3, evaluate=True)) for s in ("flat", "two-stage", "multi-head")}


def test_both_level_metrics_against_sklearn(strategy_runs):
    for strategy, run in strategy_runs[1].items():
        d = run.dir / "eval" / "test"
        m = json.loads((d / "metrics.json").read_text())
        with open(d / "predictions.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        fine = ["cat", "dog", "fern", "moss", "oak"]
        parents = np.array([0, 0, 1, 1, 1])
        y = np.array([fine.index(r["label"]) for r in rows])
        probs = np.array([[float(r[f"prob_{c}"]) for c in fine] for r in rows])
        pc = np.stack([probs[:, :2].sum(1), probs[:, 2:].sum(1)], 1)
        assert m["hierarchy_strategy"] == strategy
        assert m["coarse"]["classes"] == ["animal", "plant"]
        assert m["coarse"]["accuracy"] == pytest.approx(skm.accuracy_score(parents[y], pc.argmax(1)))
        assert m["coarse"]["macro_f1"] == pytest.approx(skm.f1_score(parents[y], pc.argmax(1), average="macro"))
        assert m["hierarchical_consistency"] == pytest.approx(np.mean(parents[probs.argmax(1)] == pc.argmax(1)))
        sev = m["mistake_severity"]
        wrong = probs.argmax(1) != y
        assert sev["fine_errors"] == wrong.sum()
        assert sev["within_coarse"] + sev["across_coarse"] == sev["fine_errors"]
        assert sev["within_coarse"] == (wrong & (parents[probs.argmax(1)] == parents[y])).sum()
        assert "Coarse level" in (d / "report.md").read_text()


def test_predict_submit_levels_and_compare(strategy_runs, tmp_path, capsys):
    data, runs = strategy_runs
    img = data / "plant" / "oak" / "oak0.png"
    assert main(["predict", str(runs["multi-head"].dir), str(img), "--level", "both", "--format", "json"]) == 0
    r = json.loads(capsys.readouterr().out)[0]
    assert r["coarse_top_k"][0]["label"] in ("animal", "plant") and r["top_k"][0]["label"] in TREE["plant"] + TREE["animal"]
    fine_total = sum(t["probability"] for t in imgclass.predict(runs["multi-head"].dir, [img], top_k=5)[0]["top_k"]
                     if t["label"] in TREE["plant"])
    coarse = {t["label"]: t["probability"] for t in r["coarse_top_k"]}
    assert coarse["plant"] == pytest.approx(fine_total, abs=1e-5)
    out = tmp_path / "s.csv"
    assert main(["submit", str(runs["flat"].dir), str(data / "plant" / "oak"), "--out", str(out), "--level", "both",
                 "--target", "label"]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["ID", "TARGET_COARSE", "TARGET_FINE"] and len(rows) == 17
    capsys.readouterr()
    assert main(["compare"] + [str(r.dir) for r in runs.values()]) == 0
    text = capsys.readouterr().out
    for strategy in ("flat", "two-stage", "multi-head"):
        assert strategy in text
    assert ("favours" in text and "points over" in text) or "tie on validation accuracy" in text


def test_check_counts_per_level(tmp_path, capsys):
    data = make_tree(tmp_path / "d", per_class=6)
    assert main(["check", str(data), "--hierarchy"]) == 0
    out = capsys.readouterr().out
    assert "usable images per coarse class" in out and "animal" in out
    report = imgclass.check(data, hierarchy=True)
    assert report.coarse_counts["all"] == {"animal": 12, "plant": 18}
    assert any("fewer than 10 training images" in rec for rec in report.recommendations)
