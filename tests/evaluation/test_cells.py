"""What the workbench shows of a split (evaluation/cells.py), against scikit-learn's counts on the same rows."""
from __future__ import annotations

import json

import numpy as np
from sklearn.metrics import multilabel_confusion_matrix

from imgclass.evaluation.cells import SCATTER_POINTS, class_cells, number_cells, tag_cells


def test_tag_cells_count_as_scikit_learn_and_open_their_images():
    rng = np.random.RandomState(0)
    names = ["red", "stripe", "dot"]
    truth, given = rng.rand(200, 3) > 0.6, rng.rand(200, 3) > 0.6
    probs = rng.rand(200, 3)
    rows = [{"path": f"{k}.png", "labels": json.dumps([n for n, t in zip(names, truth[k]) if t]),
             "predicted": json.dumps([n for n, g in zip(names, given[k]) if g]),
             **{f"prob_{n}": f"{probs[k, t]:.6f}" for t, n in enumerate(names)}} for k in range(200)]
    cells = tag_cells(rows, ["path", "labels", "predicted"] + [f"prob_{n}" for n in names])
    for t, m in enumerate(multilabel_confusion_matrix(truth, given)):
        (_, fp), (fn, tp) = m
        line = cells.view["tags"][t]
        assert (line["tp"], line["fp"], line["fn"], line["images"]) == (tp, fp, fn, truth[:, t].sum())
        assert sorted(cells.rows(f"fp:{t}")) == np.flatnonzero(~truth[:, t] & given[:, t]).tolist()
        assert [probs[k, t] for k in cells.rows(f"fn:{t}")] == sorted(probs[~given[:, t] & truth[:, t], t])


def test_number_cells_scatter_a_bounded_sample_and_list_the_largest_errors():
    rng = np.random.RandomState(1)
    truth = rng.uniform(0, 50, 10_000)
    pred = truth + rng.normal(0, 2, 10_000)
    rows = [{"path": f"{k}.png", "label": f"{t:.6g}", "prediction": f"{p:.6g}", "error": f"{p - t:.6g}"}
            for k, (t, p) in enumerate(zip(truth, pred))]
    cells = number_cells(rows, ["path", "label", "prediction", "error"])
    assert len(cells.view["points"]) <= SCATTER_POINTS and cells.view["rows"] == 10_000
    k = cells.view["points"][5][2]
    assert cells.rows(f"point:{k}") == [k]
    errors = [abs(float(rows[k]["prediction"]) - float(rows[k]["label"])) for k in cells.rows("errors")]
    assert errors == sorted(errors, reverse=True) and len(errors) == 10_000


def test_class_cells_lists_per_class_mistakes_most_confident_first():
    rows = [{"path": "a", "label": "cat", "prediction": "dog", "confidence": "0.6", "prob_cat": "0.4", "prob_dog": "0.6"},
            {"path": "b", "label": "cat", "prediction": "dog", "confidence": "0.9", "prob_cat": "0.1", "prob_dog": "0.9"},
            {"path": "c", "label": "cat", "prediction": "cat", "confidence": "0.7", "prob_cat": "0.7", "prob_dog": "0.3"},
            {"path": "d", "label": "cat", "prediction": "cat", "confidence": "0.55", "prob_cat": "0.55", "prob_dog": ".45"}]
    cells = class_cells(rows, ["path", "label", "prediction", "confidence", "prob_cat", "prob_dog"])
    assert cells.view["counts"] == [[2, 2], [0, 0]]
    assert cells.rows("wrong:0") == [1, 0] and cells.rows("unsure:0") == [3, 2]
    assert cells.rows("cell:1:0") is None
