"""What evaluate computes, writes and draws for classes: one class per image, and two-level labels (the coarse level's
metrics, consistency and mistake severity added). Registered in evaluation/tasks.py."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import UserError
from ..core.files import write_text_atomic
from ..models.inference import compute_features
from ..models.neighbours import unit_rows
from ..models.tasks import TwoLevel
from ..inference.predictor import Predictor
from . import plots
from .metrics import compute_metrics, expected_calibration_error, uncalibrated
from .report import _pct


def class_metrics(y: np.ndarray, probs: np.ndarray, predictor: Predictor, split: str, notes: list[str]) -> dict:
    """scikit-learn's metrics of the split (evaluation/metrics.py), and what calibration changed on it."""
    metrics, metric_notes = compute_metrics(y, probs, predictor.classes, split)
    notes += metric_notes
    if predictor.temperature != 1.0:
        metrics["calibration"] = {"temperature": predictor.temperature,
                                  "ece_uncalibrated": expected_calibration_error(y, uncalibrated(probs,
                                                                                                predictor.temperature))}
    return metrics


def two_level_metrics(y: np.ndarray, probs: np.ndarray, predictor: Predictor, split: str, notes: list[str]) -> dict:
    """class_metrics of the fine classes, with the coarse level's (hierarchy_metrics)."""
    metrics = class_metrics(y, probs, predictor, split, notes)
    metrics.update(hierarchy_metrics(y, probs, predictor.task, split, notes))
    return metrics


def coarse_line(metrics: dict[str, Any]) -> str:
    """The report's sentence on the coarse level of two-level labels (report.write_report's results_more)."""
    c, sev = metrics["coarse"], metrics["mistake_severity"]
    return (f" Coarse level ({len(c['classes'])} classes, strategy {metrics['hierarchy_strategy']}): accuracy "
            f"{_pct(c['accuracy'])}, macro F1 {c['macro_f1']:.3f}; {_pct(metrics['hierarchical_consistency'])} "
            f"of fine predictions sit under the predicted coarse class; of {sev['fine_errors']} fine errors "
            f"{sev['within_coarse']} stay inside the right coarse class and {sev['across_coarse']} cross it.")


def class_figures(tensors, y: np.ndarray, probs: np.ndarray, metrics: dict[str, Any], predictor: Predictor,
                  notes: list[str], explain, with_map: bool) -> dict[str, Any]:
    """Confusion matrices, ROC and PR curves, F1 per class, reliability (before and after calibration), the three
    galleries (with heatmaps of the confident mistakes), and with_map the map of the embeddings."""
    classes = predictor.classes
    figures = {"confusion_matrix": plots.confusion_matrix(metrics["confusion_matrix"], classes, normalize=False),
               "confusion_matrix_normalized": plots.confusion_matrix(metrics["confusion_matrix"], classes,
                                                                     normalize=True),
               "roc_curves": plots.roc_curves(y, probs, classes), "pr_curves": plots.pr_curves(y, probs, classes),
               "f1_per_class": plots.f1_bars(metrics["per_class"]),
               "reliability": plots.reliability_diagram(y, probs, metrics["ece"])}
    if "calibration" in metrics:
        figures["reliability_uncalibrated"] = plots.reliability_diagram(
            y, uncalibrated(probs, predictor.temperature), metrics["calibration"]["ece_uncalibrated"],
            "before calibration")
    figures.update(gallery_sets(tensors.images, y, probs, classes, explain=explain))  # a tensor, or streamed images
    if with_map:
        figures["data_map"] = data_map(predictor, tensors, y, probs, notes)
    return figures


def hierarchy_metrics(y: np.ndarray, probs: np.ndarray, hierarchy: TwoLevel, split: str, notes: list[str]) -> dict:
    """Coarse-level metrics (coarse probabilities = summed fine ones), consistency and mistake severity."""
    parents = np.asarray(hierarchy.parents)
    coarse_classes = list(hierarchy.coarse_classes)
    coarse_probs = hierarchy.coarse_probabilities(probs)
    y_coarse = parents[y]
    coarse, coarse_notes = compute_metrics(y_coarse, coarse_probs, coarse_classes, split)
    notes += [f"coarse level: {n}" for n in coarse_notes]
    fine_pred, coarse_pred = probs.argmax(1), coarse_probs.argmax(1)
    wrong = fine_pred != y
    within = wrong & (parents[fine_pred] == y_coarse)
    return {"hierarchy_strategy": hierarchy.strategy, "coarse": coarse,
            "hierarchical_consistency": float(np.mean(parents[fine_pred] == coarse_pred)),
            "mistake_severity": {"fine_errors": int(wrong.sum()), "within_coarse": int(within.sum()),
                                 "across_coarse": int((wrong & ~within).sum())}}


def write_class_predictions(path: Path, paths: list[str], y: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    """predictions.csv: path, label, prediction, confidence, prob_<class>..."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "prediction", "confidence"] + [f"prob_{c}" for c in classes])
    pred = probs.argmax(axis=1)
    for p, t, pr, row in zip(paths, y, pred, probs):
        # %.9g round-trips float32 exactly: metrics recomputed from this file match metrics.json
        writer.writerow([p, classes[t], classes[pr], f"{row[pr]:.9g}"] + [f"{v:.9g}" for v in row])
    write_text_atomic(path, buf.getvalue())


GALLERY_PER_CLASS = 4     # images in each class's row
GALLERY_MAX_CLASSES = 20  # rows of a gallery; beyond it, the classes with the lowest recall are shown


def gallery_sets(images, y: np.ndarray, probs: np.ndarray, classes: list[str], n: int = GALLERY_PER_CLASS,
                  explain=None):
    """The three questions, asked of each class (one row per class, its images of that true class): which it
    gets right most confidently, which it is least sure of, and which it gets wrong most confidently.
    explain(images, class indices) -> overlays: under each class's confident mistakes, a row of heatmaps of
    the wrongly predicted class (what the network looked at to say it)."""
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    shown = list(range(len(classes)))
    if len(classes) > GALLERY_MAX_CLASSES:
        recall = [float(np.mean(pred[y == c] == c)) if np.any(y == c) else 1.0 for c in shown]
        shown = sorted(sorted(shown, key=lambda c: recall[c])[:GALLERY_MAX_CLASSES])
    questions = {
        "gallery_confident_correct": ("Most confident correct, per class", lambda i: pred[i] == y[i], -conf),
        "gallery_least_confident": ("Least confident, per class (closest to the decision boundary)",
                                    lambda i: np.ones(len(i), bool), conf),
        "gallery_top_losses": ("Most confidently wrong, per class", lambda i: pred[i] != y[i], -conf),
    }
    suffix = "" if len(shown) == len(classes) else f" ({len(shown)} of {len(classes)} classes: the lowest recall)"
    out = {}
    for name, (title, keep, order) in questions.items():
        rows = []
        for c in shown:
            members = np.flatnonzero(y == c)
            members = members[keep(members)]
            idx = members[np.argsort(order[members], kind="stable")][:n]
            picked = images[torch.as_tensor(idx, dtype=torch.long)].numpy() if len(idx) else []
            rows.append((classes[c], [img.transpose(1, 2, 0) for img in picked],
                         [f"{classes[pred[i]]} {probs[i, pred[i]]:.2f}" for i in idx]))
            if name == "gallery_top_losses" and explain is not None and len(idx):
                rows.append((f"{classes[c]}: heatmap", explain(torch.from_numpy(np.asarray(picked)),
                                                               [int(pred[i]) for i in idx]),
                             [f"why {classes[pred[i]]}" for i in idx]))
        out[name] = plots.gallery_rows(rows, title + suffix, n)
    return out


def data_map(predictor: Predictor, tensors, y: np.ndarray, probs: np.ndarray, notes: list[str]):
    """The split's embeddings on a map (plots.data_map), its mistakes and the images --reject would refuse marked."""
    if predictor.model is None:
        raise UserError(f"--map needs the model file (the embeddings come from its backbone), not an "
                        f"{predictor.exported_as} export")
    feats = unit_rows(compute_features(predictor.model, tensors.images, predictor.pre, 64, predictor.device).numpy())
    marked = {"mistake": set(np.flatnonzero(probs.argmax(1) != y).tolist())}
    if predictor.header.reject is not None:  # what predict --reject would answer 'unknown' (its rule, its score)
        marked["rejected (--reject)"] = set(np.flatnonzero(predictor.rejection(True).decide(probs, feats)[0]).tolist())
    return plots.data_map(feats, y, predictor.classes, marked)


