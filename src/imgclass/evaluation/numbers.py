"""What evaluate computes, writes and draws for a number per image (models/tasks/numbers.py): MAE, RMSE, R², the
median and largest absolute error (scikit-learn's), Spearman's and Pearson's correlation (SciPy's), and what
predicting the training mean would score (the baseline a model must beat); predictions.csv; a scatter of predicted
against true, the residuals' histogram and the largest errors as a gallery; the written report."""
from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm

from ..core.figures import new_figure
from ..core.files import write_text_atomic
from ..inference.predictor import Predictor
from . import plots
from .report import (RunContext, _model_paragraph, figure_sections_html, figure_sections_md, html_page, inline_html,
                     limit_words, TLDR_WORD_LIMIT)

LARGEST_ERRORS = 16  # images in the gallery of the largest errors (4 rows of 4)


def number_metrics(y: np.ndarray, values: np.ndarray, predictor: Predictor, split: str, notes: list[str]) -> dict:
    """metrics.json for a split: every number computed by scikit-learn or SciPy from (truth, prediction)."""
    from scipy import stats
    truth, pred = np.asarray(y, dtype=np.float64), np.asarray(values, dtype=np.float64)[:, 0]
    errors = pred - truth
    baseline = np.full_like(truth, predictor.task.target_mean)  # predicting the training mean for every image
    varied = len(truth) > 1 and truth.std() > 0 and pred.std() > 0
    if not varied:
        notes.append(f"the {split} split's numbers (or the model's answers) do not vary: R² and the correlations "
                     "are undefined")
    return {"split": split, "n": int(len(truth)), "classes": list(predictor.classes),
            "mae": float(skm.mean_absolute_error(truth, pred)),
            "rmse": float(math.sqrt(skm.mean_squared_error(truth, pred))),
            "r2": float(skm.r2_score(truth, pred)) if len(truth) > 1 else float("nan"),
            "median_absolute_error": float(skm.median_absolute_error(truth, pred)),
            "max_error": float(skm.max_error(truth, pred)),
            "spearman": float(stats.spearmanr(truth, pred).statistic) if varied else float("nan"),
            "pearson": float(stats.pearsonr(truth, pred).statistic) if varied else float("nan"),
            "mean_error": float(errors.mean()),
            "baseline_mae": float(skm.mean_absolute_error(truth, baseline)),
            "mean_true": float(truth.mean()), "mean_predicted": float(pred.mean()),
            "training_mean": predictor.task.target_mean}


def write_number_predictions(path: Path, paths: list[str], y: np.ndarray, values: np.ndarray,
                             predictor: Predictor) -> None:
    """predictions.csv: path, label (the true number), prediction, error (prediction - label); %.9g round-trips
    float32, so metrics recomputed from this file match metrics.json."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "prediction", "error"])
    for p, truth, pred in zip(paths, y, values[:, 0]):
        writer.writerow([p, f"{float(truth):.9g}", f"{float(pred):.9g}", f"{float(pred) - float(truth):.9g}"])
    write_text_atomic(path, buf.getvalue())


def number_figures(tensors, y: np.ndarray, values: np.ndarray, metrics: dict[str, Any], predictor: Predictor,
                   notes: list[str], explain, with_map: bool) -> dict[str, Any]:
    """The scatter of predicted against true, the residuals' histogram, and the largest errors as a gallery."""
    truth, pred = np.asarray(y, dtype=np.float64), values[:, 0].astype(np.float64)
    name = predictor.classes[0]
    fig, ax = new_figure(1, 1, figsize=(6, 6))
    ax.scatter(truth, pred, s=8, alpha=0.6)
    low, high = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
    ax.plot([low, high], [low, high], "k--", lw=1, label="predicted = true")
    ax.set(xlabel=f"true {name}", ylabel=f"predicted {name}",
           title=f"Predicted against true (MAE {metrics['mae']:.3g}, R² {metrics['r2']:.3f})")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    figures = {"predicted_vs_true": fig}
    fig, ax = new_figure(1, 1, figsize=(7, 4))
    ax.hist(pred - truth, bins=min(50, max(10, len(truth) // 10)), color="tab:blue", alpha=0.8)
    ax.axvline(0, color="k", lw=1)
    ax.set(xlabel=f"prediction - true {name}", ylabel="images",
           title=f"Residuals (mean {metrics['mean_error']:+.3g}: the model's bias)")
    fig.tight_layout()
    figures["residuals"] = fig
    figures["gallery_largest_errors"] = _largest_errors(tensors.images, truth, pred)
    return figures


def _largest_errors(images, truth: np.ndarray, pred: np.ndarray, n: int = LARGEST_ERRORS, cols: int = 4):
    """The n images with the largest absolute error, largest first, each captioned true -> predicted."""
    order = np.argsort(-np.abs(pred - truth), kind="stable")[:n]
    picked = images[torch.as_tensor(order, dtype=torch.long)].numpy() if len(order) else []
    rows = []
    for start in range(0, len(order), cols):
        chunk = order[start:start + cols]
        rows.append((f"#{start + 1}-{start + len(chunk)}", [img.transpose(1, 2, 0) for img in picked[start:start + cols]],
                     [f"true {truth[i]:.3g}, said {pred[i]:.3g}" for i in chunk]))
    return plots.gallery_rows(rows, "The largest errors (check their labels first)", cols)


def number_tldr(metrics: dict[str, Any], notes: list[str], ctx: RunContext) -> list[str]:
    """The TL;DR, from this split's numbers: data, model, results against the baseline, bias, notes."""
    name = metrics["classes"][0]
    paras = [f"**Data.** {metrics['n']} images in the {metrics['split']} split, each with a number ({name}); "
             f"their mean {metrics['mean_true']:.4g} (the training mean: {metrics['training_mean']:.4g})."]
    if ctx.header is not None:
        paras.append(_model_paragraph(ctx))
    gain = 1 - metrics["mae"] / metrics["baseline_mae"] if metrics["baseline_mae"] > 0 else float("nan")
    paras.append(f"**Results.** MAE {metrics['mae']:.4g} (median {metrics['median_absolute_error']:.4g}, largest "
                 f"{metrics['max_error']:.4g}), RMSE {metrics['rmse']:.4g}, R² {metrics['r2']:.3f}, Spearman "
                 f"{metrics['spearman']:.3f}. Predicting the training mean for every image would score MAE "
                 f"{metrics['baseline_mae']:.4g}: the model's error is {100 * gain:.0f}% lower.")
    bias = metrics["mean_error"]
    if abs(bias) > 0.25 * metrics["mae"]:
        paras.append(f"**Diagnosis.** The model is biased: it says {abs(bias):.3g} {'more' if bias > 0 else 'less'} "
                     f"than the truth on average (see the residuals); a split whose numbers differ from training's, "
                     f"or too few epochs, are the usual causes.")
    paras += [f"**Note.** {n}" for n in notes]
    return limit_words(paras, TLDR_WORD_LIMIT)


def _rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    keys = ("n", "mae", "rmse", "r2", "median_absolute_error", "max_error", "spearman", "pearson", "mean_error",
            "baseline_mae")
    return [(k, str(m[k]) if k == "n" else f"{m[k]:.4g}") for k in keys]


def write_number_report(out_dir: Path, metrics: dict[str, Any], notes: list[str], figures: dict[str, Path],
                        ctx: RunContext) -> None:
    """report.md and a self-contained report.html: the TL;DR, the metrics, the figures."""
    title = f"imgclass evaluation: {metrics['split']} split (a number per image: {metrics['classes'][0]})"
    paras, rows = number_tldr(metrics, notes, ctx), _rows(metrics)
    md = [f"# {title}", "", "## TL;DR", ""] + [line for p in paras for line in (p, "")]
    md += ["## Metrics", "", "| metric | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    write_text_atomic(out_dir / "report.md", "\n".join(md + figure_sections_md(figures)))
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>TL;DR</h2>"] + [f"<p>{inline_html(p)}</p>" for p in paras]
    body += ["<h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>"]
    body += [f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows] + ["</table>"]
    write_text_atomic(out_dir / "report.html", html_page(title, body + figure_sections_html(figures)))
