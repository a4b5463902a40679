"""Every metric of an evaluation, computed with scikit-learn from labels and probabilities. The expected
calibration error, which scikit-learn lacks, is models/calibration.py's (calibration is fitted on it too)."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm

from ..models.calibration import ECE_BINS, expected_calibration_error, tag_ece  # noqa: F401 (metrics of an evaluation)

def reliability_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS):
    """(bin centres, accuracy per bin, mean confidence per bin, count per bin) for the reliability diagram."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    acc = np.array([correct[idx == b].mean() if (idx == b).any() else np.nan for b in range(bins)])
    mean_conf = np.array([conf[idx == b].mean() if (idx == b).any() else np.nan for b in range(bins)])
    count = np.bincount(idx, minlength=bins)
    return (np.arange(bins) + 0.5) / bins, acc, mean_conf, count


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str], split: str
                    ) -> tuple[dict[str, Any], list[str]]:
    """metrics.json content and warnings (e.g. a class absent from this split)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    labels = list(range(k))
    y_pred = probs.argmax(axis=1)
    notes: list[str] = []
    support = np.bincount(y_true, minlength=k)
    absent = [classes[i] for i in labels if support[i] == 0]
    if absent:
        notes.append(f"class(es) {', '.join(absent)} have no image in the {split} split: their recall, F1 and "
                     f"ROC AUC are undefined here (recall/F1 reported as 0, AUC as null) and the macro averages "
                     f"include them as 0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined-metric warnings are summarised in `notes`
        p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        out: dict[str, Any] = {
            "split": split,
            "n": int(len(y_true)),
            "classes": list(classes),
            "accuracy": float(skm.accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
            "weighted_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
            "macro_precision": float(np.mean(p)),
            "macro_recall": float(np.mean(r)),
        }
        for top in (3, 5):
            if k > top:
                out[f"top{top}_accuracy"] = float(skm.top_k_accuracy_score(y_true, probs, k=top, labels=labels))
        out["per_class"] = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                "support": int(s[i])} for i, c in enumerate(classes)}
        out["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
        auc = {}
        for i, c in enumerate(classes):
            positives = y_true == i
            auc[c] = float(skm.roc_auc_score(positives, probs[:, i])) if 0 < positives.sum() < len(y_true) else None
        out["roc_auc_per_class"] = auc
        defined = [v for v in auc.values() if v is not None]
        out["roc_auc_macro"] = float(np.mean(defined)) if defined else None
        out["log_loss"] = float(skm.log_loss(y_true, probs, labels=labels))
    out["ece"] = expected_calibration_error(y_true, probs)
    out["mean_confidence"] = float(probs.max(axis=1).mean()) if len(probs) else float("nan")
    out["most_confused"] = most_confused_pairs(out["confusion_matrix"], classes)
    return out, notes


def most_confused_pairs(cm: list[list[int]], classes: list[str], top: int = 10) -> list[dict[str, Any]]:
    """Off-diagonal cells, largest first: (true, predicted, count, share of the true class)."""
    cm_arr = np.asarray(cm)
    rows = cm_arr.sum(axis=1)
    pairs = [(int(cm_arr[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes))
             if i != j and cm_arr[i, j] > 0]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [{"true": classes[i], "predicted": classes[j], "count": n, "share_of_true": n / rows[i]}
            for n, i, j in pairs[:top]]


def uncalibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before calibration, from calibrated ones: softmax(T log p) = softmax(z)."""
    z = temperature * np.log(np.clip(probs, 1e-30, 1.0))
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
