"""Figures of an evaluation, each a matplotlib Figure (shown inline in a notebook, saved as PNG
by the report). Class names label the axes; each figure reads without explanation."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm

from ..core.figures import new_figure
from .metrics import reliability_bins


MAX_CLASS_LINES = 15  # beyond this many classes, ROC/PR plots show only the averages


def _ticks(ax, classes: list[str], axis: str) -> None:
    n = len(classes)
    step = max(1, math.ceil(n / 40))
    pos = list(range(0, n, step))
    if axis == "x":
        tilt = n > 5 and max(len(c) for c in classes) > 3  # tilt only names that would overlap
        ax.set_xticks(pos, [classes[i] for i in pos], rotation=45 if tilt else 0, ha="right" if tilt else "center")
    else:
        ax.set_yticks(pos, [classes[i] for i in pos])


def training_curves(history: list[dict[str, Any]], score_name: str = "accuracy",
                    train_score_name: str = "accuracy") -> Figure:
    """Loss and the scores (metrics.csv's *_acc columns: accuracy; with several tags per image validation mAP
    and training exact match) per epoch, and the learning rate."""
    fig, axes = new_figure(1, 3, figsize=(13, 3.6))
    epochs = [int(r["epoch"]) for r in history]
    score_title = "Accuracy" if score_name == train_score_name == "accuracy" else \
        f"validation {score_name}, train {train_score_name}"
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "acc", score_title)):
        ax.plot(epochs, [float(r[f"train_{key}"]) for r in history], "o-", label="train")
        ax.plot(epochs, [float(r[f"val_{key}"]) for r in history], "o-", label="validation")
        ax.set(title=title, xlabel="epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].plot(epochs, [float(r["lr"]) for r in history], "o-", color="tab:green")
    axes[2].set(title="Learning rate (end of epoch)", xlabel="epoch")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def validation_curves(histories: dict[str, list[dict[str, Any]]]) -> Figure:
    """Validation accuracy and loss per epoch, one line per run (compare's overlay)."""
    fig, axes = new_figure(1, 2, figsize=(12, 4))
    for name, history in histories.items():
        rows = [r for r in history if r.get("val_acc") not in (None, "", "nan")]
        epochs = [int(r["epoch"]) for r in rows]
        axes[0].plot(epochs, [float(r["val_acc"]) for r in rows], "o-", ms=3, label=name)
        axes[1].plot(epochs, [float(r["val_loss"]) for r in rows], "o-", ms=3, label=name)
    for ax, title in ((axes[0], "Validation accuracy"), (axes[1], "Validation loss")):
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
    if histories:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def confusion_matrix(cm: list[list[int]], classes: list[str], normalize: bool) -> Figure:
    arr = np.asarray(cm, dtype=np.float64)
    if normalize:
        rows = arr.sum(axis=1, keepdims=True)
        arr = np.divide(arr, rows, out=np.zeros_like(arr), where=rows > 0)
    n = len(classes)
    size = min(4 + 0.45 * n, 18)
    fig, ax = new_figure(figsize=(size + 1, size))
    im = ax.imshow(arr, cmap="Blues", vmin=0, vmax=1 if normalize else max(arr.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    _ticks(ax, classes, "x")
    _ticks(ax, classes, "y")
    ax.set(xlabel="predicted class", ylabel="true class",
           title="Confusion matrix (share of each true class)" if normalize else "Confusion matrix (counts)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                value = f"{arr[i, j]:.2f}" if normalize else f"{int(arr[i, j])}"
                ax.text(j, i, value, ha="center", va="center", fontsize=8,
                        color="white" if arr[i, j] > 0.5 * (1 if normalize else arr.max()) else "black")
    fig.tight_layout()
    return fig


def roc_curves(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> Figure:
    onehot = np.eye(len(classes))[y_true]
    fig, ax = new_figure(figsize=(6.5, 5.5))
    grid = np.linspace(0, 1, 201)
    tprs = []
    for i, c in enumerate(classes):
        if 0 < onehot[:, i].sum() < len(y_true):
            fpr, tpr, _ = skm.roc_curve(onehot[:, i], probs[:, i])
            tprs.append(np.interp(grid, fpr, tpr))
            if len(classes) <= MAX_CLASS_LINES:
                ax.plot(fpr, tpr, lw=1, alpha=0.6, label=f"{c} (AUC {skm.auc(fpr, tpr):.3f})")
    fpr, tpr, _ = skm.roc_curve(onehot.ravel(), probs.ravel())
    ax.plot(fpr, tpr, "k--", lw=2, label=f"micro average (AUC {skm.auc(fpr, tpr):.3f})")
    if tprs:
        mean_tpr = np.mean(tprs, axis=0)
        ax.plot(grid, mean_tpr, "k-", lw=2, label=f"macro average (AUC {skm.auc(grid, mean_tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curves (one class vs rest)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def pr_curves(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> Figure:
    onehot = np.eye(len(classes))[y_true]
    fig, ax = new_figure(figsize=(6.5, 5.5))
    aps = []
    for i, c in enumerate(classes):
        if onehot[:, i].sum() > 0:
            prec, rec, _ = skm.precision_recall_curve(onehot[:, i], probs[:, i])
            ap = skm.average_precision_score(onehot[:, i], probs[:, i])
            aps.append(ap)
            if len(classes) <= MAX_CLASS_LINES:
                ax.plot(rec, prec, lw=1, alpha=0.6, label=f"{c} (AP {ap:.3f})")
    prec, rec, _ = skm.precision_recall_curve(onehot.ravel(), probs.ravel())
    ax.plot(rec, prec, "k--", lw=2, label=f"micro average (AP {skm.average_precision_score(onehot.ravel(), probs.ravel()):.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"Precision-recall curves (mean AP {np.mean(aps) if aps else float('nan'):.3f})")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def f1_bars(per_class: dict[str, dict[str, float]]) -> Figure:
    names = list(per_class)
    f1 = [per_class[c]["f1"] for c in names]
    order = np.argsort(f1)
    fig, ax = new_figure(figsize=(7, max(2.5, 0.3 * len(names) + 1)))
    ax.barh([names[i] for i in order], [f1[i] for i in order], color="tab:blue")
    for y, i in enumerate(order):
        ax.text(f1[i] + 0.01, y, f"{f1[i]:.2f} (n={per_class[names[i]]['support']})", va="center", fontsize=7)
    ax.set(xlim=(0, 1.15), xlabel="F1 score", title="F1 per class (weakest at the bottom)")
    fig.tight_layout()
    return fig


def reliability_diagram(y_true: np.ndarray, probs: np.ndarray, ece: float, when: str = "") -> Figure:
    centres, acc, conf, count = reliability_bins(y_true, probs)
    fig, ax = new_figure(figsize=(5.5, 5))
    width = 1.0 / len(centres)
    ax.bar(centres, np.nan_to_num(acc), width=width, edgecolor="black", alpha=0.7, label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    ax.plot(conf, acc, "o", color="tab:red", ms=4, label="mean confidence vs accuracy")
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability diagram{' ' + when if when else ''} (ECE {ece:.3f})")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def gallery_rows(rows: list[tuple[str, list[np.ndarray], list[str]]], title: str, cols: int) -> Figure:
    """One row per class: its name on the left, up to cols images, each with the predicted class and its
    probability underneath."""
    fig, axes = new_figure(max(1, len(rows)), cols, figsize=(1.9 * cols + 1.2, 2.0 * max(1, len(rows)) + 0.5),
                          squeeze=False)
    for r, (name, images, captions) in enumerate(rows):
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        axes[r, 0].set_ylabel(name, fontsize=9, rotation=0, ha="right", va="center")
        for ax, img, cap in zip(axes[r], images, captions):
            ax.imshow(img, interpolation="nearest" if img.shape[0] < 64 else "antialiased")
            ax.set_xlabel(cap, fontsize=7)
        if not images:
            axes[r, 0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=8, transform=axes[r, 0].transAxes)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


MAP_POINTS = 5000  # a map of the data places at most this many images (a seeded sample): t-SNE grows as n log n
MARKS = [dict(marker="x", color="black", s=30), dict(marker="o", facecolors="none", edgecolors="red", s=40)]


def data_map(vectors: np.ndarray, labels: np.ndarray, classes: list[str], marked: dict[str, set[int]],
             seed: int = 0) -> Figure:
    """A 2-D map of image embeddings (scikit-learn's t-SNE, PCA-initialised and seeded), one colour per class, with
    sets of images marked (e.g. suspected label errors, outliers, mistakes): near points are images the model sees
    as alike, so a class split in two islands or an island of mixed colours is worth a look."""
    from sklearn.manifold import TSNE
    keep = np.arange(len(vectors))
    if len(keep) > MAP_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(len(vectors), MAP_POINTS, replace=False))
    fig, ax = new_figure(figsize=(9, 7))
    if len(keep) >= 4:  # t-SNE needs a few points (its perplexity must stay below their number)
        xy = TSNE(2, perplexity=min(30.0, (len(keep) - 1) / 3), init="pca", random_state=seed).fit_transform(
            vectors[keep])
    else:
        xy = np.zeros((len(keep), 2))
    import matplotlib
    cmap = matplotlib.colormaps["tab20" if len(classes) > 10 else "tab10"]
    for c in range(len(classes)):
        m = labels[keep] == c
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(c % cmap.N), label=classes[c])
    for (name, members), style in zip(marked.items(), MARKS):
        m = np.isin(keep, list(members))
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], label=name, **style)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of {len(keep)} image embeddings")
    if len(classes) <= 30:
        ax.legend(fontsize=7, markerscale=2, loc="best", ncol=2)
    return fig
