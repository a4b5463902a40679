"""The evaluation of a model with several tags per image (models/task.MultiLabel): every number is
scikit-learn's, recomputable from predictions.csv (the tags, the tags given at the model's thresholds and each
tag's probability), each threshold-dependent one both at the model's per-tag thresholds (chosen on
validation) and at a plain 0.5 for comparison. The macro averages (mAP, macro F1) average the same tags: those with
at least one image in the split (scikit-learn's `labels=` for F1); a tag without one is named in a note, since its
AP is undefined and its F1 would only count as 0.
"""
from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm

from ..core.files import write_text_atomic
from ..core.figures import new_figure
from .metrics import tag_ece
from .report import (RunContext, TLDR_WORD_LIMIT, _model_paragraph, _pct, figure_sections_html, figure_sections_md,
                     html_page, inline_html, limit_words)

WEAKEST_SHOWN = 12  # tags drawn in the precision-recall figure (the lowest AP first), and named in the TL;DR (5)


def tag_metrics(y: np.ndarray, probs: np.ndarray, names: list[str], thresholds: np.ndarray, split: str,
                uncalibrated: np.ndarray | None = None) -> tuple[dict[str, Any], list[str]]:
    """metrics.json of a split: y N x tags 0/1, probs N x tags, the model's per-tag thresholds; uncalibrated:
    the probabilities before the model's per-tag calibration (None: not calibrated), for ECE before and after."""
    y = y.astype(int)
    present = y.sum(0) > 0
    both = present & (y.sum(0) < len(y))
    notes = []
    if not present.all():
        notes.append(f"{int((~present).sum())} tag(s) have no image in the {split} split (their AP is undefined): "
                     + ", ".join(n for n, p in zip(names, present) if not p)[:200])
    decided = probs >= thresholds[None, :]
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, decided, average=None, zero_division=0)
    per_tag = {}
    for j, name in enumerate(names):
        per_tag[name] = {
            "ap": float(skm.average_precision_score(y[:, j], probs[:, j])) if present[j] else None,
            "roc_auc": float(skm.roc_auc_score(y[:, j], probs[:, j])) if both[j] else None,
            "precision": float(precision[j]), "recall": float(recall[j]), "f1": float(f1[j]),
            "support": int(support[j]), "threshold": float(thresholds[j]),
            "ece": tag_ece(y[:, j], probs[:, j])}
    at_thresholds = _decision_metrics(y, decided, present)
    metrics = {
        "split": split, "task": "multi-label", "n": int(len(y)), "classes": list(names),
        "map": float(skm.average_precision_score(y[:, present], probs[:, present], average="macro"))
        if present.any() else None,
        "micro_ap": float(skm.average_precision_score(y, probs, average="micro")) if present.any() else None,
        "roc_auc_macro": float(skm.roc_auc_score(y[:, both], probs[:, both], average="macro")) if both.any() else None,
        "ece_macro": float(np.mean([per_tag[n]["ece"] for n in names])),
        "label_ranking_average_precision": float(skm.label_ranking_average_precision_score(y, probs)),
        "coverage_error": float(skm.coverage_error(y, probs)),
        # the shared keys (compare, tune, the model card): exact-match accuracy and macro F1 at the thresholds
        "accuracy": at_thresholds["subset_accuracy"], "macro_f1": at_thresholds["macro_f1"],
        "at_thresholds": at_thresholds, "at_0.5": _decision_metrics(y, probs >= 0.5, present),
        "per_tag": per_tag,
        "untagged": int((y.sum(1) == 0).sum()),
        "tags_per_image": {"true": float(y.sum(1).mean()), "predicted": float(decided.sum(1).mean())},
    }
    if uncalibrated is not None:
        for j, name in enumerate(names):
            per_tag[name]["ece_uncalibrated"] = tag_ece(y[:, j], uncalibrated[:, j])
        metrics["calibration"] = {"method": "platt",
                                  "ece_macro_uncalibrated": float(np.mean([per_tag[n]["ece_uncalibrated"]
                                                                           for n in names]))}
    return metrics, notes


def _decision_metrics(y: np.ndarray, decided: np.ndarray, present: np.ndarray) -> dict[str, float | None]:
    """The threshold-dependent numbers; macro F1 over the tags present in the split, as mAP."""
    averaged = np.flatnonzero(present)
    return {"micro_f1": float(skm.f1_score(y, decided, average="micro", zero_division=0)),
            "macro_f1": float(skm.f1_score(y, decided, average="macro", labels=averaged, zero_division=0))
            if len(averaged) else None,
            "samples_f1": float(skm.f1_score(y, decided, average="samples", zero_division=0)),
            "subset_accuracy": float(skm.accuracy_score(y, decided)),
            "hamming_loss": float(skm.hamming_loss(y, decided))}


def write_tag_predictions(path: Path, paths: list[str], y: np.ndarray, probs: np.ndarray, decided: np.ndarray,
                          names: list[str]) -> None:
    """predictions.csv: path, labels (the true tags, a JSON list), predicted (the tags given), prob_<tag>..."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "labels", "predicted"] + [f"prob_{n}" for n in names])
    for p, truth, given, row in zip(paths, y, decided, probs):
        writer.writerow([p, json.dumps([n for n, t in zip(names, truth) if t], ensure_ascii=False),
                         json.dumps([n for n, g in zip(names, given) if g], ensure_ascii=False)]
                        + [f"{v:.9g}" for v in row])  # %.9g round-trips float32
    write_text_atomic(path, buf.getvalue())


def tag_figures(y: np.ndarray, probs: np.ndarray, metrics: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Precision-recall curves (the weakest tags and the micro average), AP against each tag's frequency, F1 per
    tag at its threshold."""
    per = metrics["per_tag"]
    scored = sorted((t for t in names if per[t]["ap"] is not None), key=lambda t: per[t]["ap"])
    fig, ax = new_figure(1, 1, figsize=(7, 5))
    for t in scored[:WEAKEST_SHOWN]:
        j = names.index(t)
        precision, recall, _ = skm.precision_recall_curve(y[:, j], probs[:, j])
        ax.plot(recall, precision, lw=1, label=f"{t} (AP {per[t]['ap']:.2f})")
    if scored:
        precision, recall, _ = skm.precision_recall_curve(y.ravel(), probs.ravel())
        ax.plot(recall, precision, "k--", lw=2, label=f"micro average (AP {metrics['micro_ap']:.2f})")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall: the weakest tags", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    out = {"pr_curves_tags": fig}
    fig, ax = new_figure(1, 1, figsize=(7, 4.5))
    support = [per[t]["support"] for t in scored]
    ax.scatter(support, [per[t]["ap"] for t in scored])
    for t, s in zip(scored[:WEAKEST_SHOWN], support):
        ax.annotate(t, (s, per[t]["ap"]), fontsize=7)
    ax.set(xscale="log", xlabel="images with the tag in this split", ylabel="average precision",
           title="AP against tag frequency", ylim=(0, 1.02))
    fig.tight_layout()
    out["ap_vs_frequency"] = fig
    fig, ax = new_figure(1, 1, figsize=(7, max(3, 0.25 * len(names) + 1)))
    order = sorted(names, key=lambda t: per[t]["f1"])
    ax.barh(order, [per[t]["f1"] for t in order])
    ax.set(xlabel="F1 at the tag's threshold", xlim=(0, 1), title="F1 per tag")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    out["f1_per_tag"] = fig
    out["f1_vs_threshold"] = _f1_against_threshold(y, probs, per, names, scored[:6])
    out["co_occurrence"] = _co_occurrence(y, probs >= np.array([per[t]["threshold"] for t in names])[None, :], names)
    return out


def _f1_against_threshold(y: np.ndarray, probs: np.ndarray, per: dict, names: list[str], tags: list[str]):
    """F1 of the weakest tags as their threshold moves, each tag's chosen threshold marked."""
    fig, ax = new_figure(1, 1, figsize=(7, 4.5))
    grid = np.linspace(0.01, 0.99, 99)
    for t in tags:
        j = names.index(t)
        f1 = [skm.f1_score(y[:, j], probs[:, j] >= g, zero_division=0) for g in grid]
        line, = ax.plot(grid, f1, label=t)
        ax.axvline(per[t]["threshold"], color=line.get_color(), ls=":", lw=1)
    ax.set(xlabel="threshold", ylabel="F1", ylim=(0, 1.02), title="F1 against threshold: the weakest tags (dotted: chosen)")
    if tags:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _co_occurrence(y: np.ndarray, decided: np.ndarray, names: list[str], most: int = 15):
    """How often pairs of the most frequent tags occur together: in the labels, and in the tags given."""
    keep = np.argsort(-y.sum(0), kind="stable")[:most]
    fig, axes = new_figure(1, 2, figsize=(12, 5.5))
    for ax, matrix, title in ((axes[0], y, "true"), (axes[1], decided.astype(int), "predicted")):
        counts = matrix[:, keep].T @ matrix[:, keep]
        ax.imshow(counts, cmap="Blues")
        ax.set_xticks(range(len(keep)), [names[i] for i in keep], rotation=90, fontsize=7)
        ax.set_yticks(range(len(keep)), [names[i] for i in keep], fontsize=7)
        ax.set_title(f"images with both tags: {title}")
    fig.tight_layout()
    return fig


def tag_galleries(images, y: np.ndarray, probs: np.ndarray, metrics: dict[str, Any], names: list[str],
                  explain=None, n: int = 6, most: int = 20) -> dict[str, Any]:
    """For each tag (at most `most`, the lowest AP first; one row each): its most confident false positives
    (images without the tag given it with the highest probability) and false negatives (images with the tag
    given it least), each row followed by the heatmaps of that tag (explain(images, tag indices) -> overlays;
    None: no heatmaps, e.g. the mlp)."""
    from . import plots
    per = metrics["per_tag"]
    order = sorted(names, key=lambda t: (per[t]["ap"] is None, per[t]["ap"] or 0.0))[:most]
    out = {}
    for name, title, wrong, rank in (
            ("gallery_false_positives", "Most confident false positives, per tag", lambda j: (y[:, j] == 0), -1),
            ("gallery_false_negatives", "Least confident false negatives, per tag", lambda j: (y[:, j] == 1), 1)):
        rows = []
        for tag in order:
            j = names.index(tag)
            given = probs[:, j] >= per[tag]["threshold"]
            members = np.flatnonzero(wrong(j) & (given if rank < 0 else ~given))
            idx = members[np.argsort(rank * probs[members, j], kind="stable")][:n]
            picked = images[torch.as_tensor(idx, dtype=torch.long)].numpy() if len(idx) else []
            rows.append((tag, [img.transpose(1, 2, 0) for img in picked], [f"{tag} {probs[i, j]:.2f}" for i in idx]))
            if explain is not None and len(idx):
                rows.append((f"{tag}: heatmap", explain(torch.from_numpy(np.asarray(picked)), [j] * len(idx)),
                             [f"why {tag}" for _ in idx]))
        out[name] = plots.gallery_rows(rows, title, n)
    return out


def tag_tldr(metrics: dict[str, Any], notes: list[str], ctx: RunContext) -> list[str]:
    """The TL;DR, from this split's numbers: data, model, results, weakest tags."""
    at, plain, per = metrics["at_thresholds"], metrics["at_0.5"], metrics["per_tag"]
    paras = [f"**Data.** {metrics['n']} images in the {metrics['split']} split, {len(metrics['classes'])} tags; "
             f"{metrics['tags_per_image']['true']:.2f} tags per image on average, {metrics['untagged']} image(s) "
             f"with none."]
    if ctx.header is not None:
        paras.append(_model_paragraph(ctx))
    m_ap = metrics["map"]
    paras.append(f"**Results.** mAP {m_ap:.3f} (micro AP {metrics['micro_ap']:.3f}). At the per-tag thresholds "
                 f"chosen on validation: macro F1 {at['macro_f1']:.3f}, micro F1 {at['micro_f1']:.3f}, exact match "
                 f"{_pct(at['subset_accuracy'])} of images, Hamming loss {at['hamming_loss']:.3f}; at a plain 0.5: "
                 f"macro F1 {plain['macro_f1']:.3f}, exact match {_pct(plain['subset_accuracy'])}. The model gives "
                 f"{metrics['tags_per_image']['predicted']:.2f} tags per image."
                 if m_ap is not None else "**Results.** No tag has an image in this split: nothing to score.")
    if "calibration" in metrics:
        paras.append(f"**Calibration.** Each tag's probability is calibrated on validation (Platt scaling): its ECE "
                     f"here averages {metrics['ece_macro']:.3f} over the tags, against "
                     f"{metrics['calibration']['ece_macro_uncalibrated']:.3f} before calibration.")
    weak = sorted((t for t in per if per[t]["ap"] is not None), key=lambda t: per[t]["ap"])[:5]
    if weak:
        paras.append("**Weakest tags** (AP, images): " + "; ".join(f"{t} {per[t]['ap']:.2f} ({per[t]['support']})"
                                                                 for t in weak)
                     + ". Rare tags are usually the weak ones: more images of them help most.")
    paras += [f"**Note.** {n}" for n in notes]
    return limit_words(paras, TLDR_WORD_LIMIT)


def write_tag_report(out_dir: Path, metrics: dict[str, Any], notes: list[str], figures: dict[str, Path],
                     ctx: RunContext) -> None:
    """report.md and a self-contained report.html: the TL;DR, the metrics, the per-tag table by AP, figures."""
    title = f"imgclass evaluation: {metrics['split']} split (several tags per image)"
    paras = tag_tldr(metrics, notes, ctx)
    rows = _summary_rows(metrics)
    per = metrics["per_tag"]
    order = sorted(per, key=lambda t: (per[t]["ap"] is None, per[t]["ap"] or 0.0))
    columns = ["tag", "AP", "ROC AUC", "threshold", "precision", "recall", "F1", "support"]
    cells = [[t, _num(per[t]["ap"]), _num(per[t]["roc_auc"]), f"{per[t]['threshold']:.3f}", _num(per[t]["precision"]),
              _num(per[t]["recall"]), _num(per[t]["f1"]), str(per[t]["support"])] for t in order]
    md = [f"# {title}", "", "## TL;DR", ""] + [line for p in paras for line in (p, "")]
    md += ["## Metrics", "", "| metric | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    md += ["", "## Per tag (weakest AP first)", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    write_text_atomic(out_dir / "report.md", "\n".join(md + figure_sections_md(figures)))
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>TL;DR</h2>"] + [f"<p>{inline_html(p)}</p>" for p in paras]
    body += ["<h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>"]
    body += [f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows] + ["</table>"]
    body += ["<h2>Per tag (weakest AP first)</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"]
    body += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells] + ["</table>"]
    write_text_atomic(out_dir / "report.html", html_page(title, body + figure_sections_html(figures)))


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _summary_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    at, plain = m["at_thresholds"], m["at_0.5"]
    rows = [("images", str(m["n"])), ("mAP (macro average precision)", _num(m["map"])), ("micro AP", _num(m["micro_ap"])),
            ("ROC AUC (macro)", _num(m["roc_auc_macro"])), ("ECE per tag (mean)", _num(m["ece_macro"]))]
    if "calibration" in m:
        rows.append(("ECE per tag before calibration (mean)", _num(m["calibration"]["ece_macro_uncalibrated"])))
    rows += [("label ranking average precision", _num(m["label_ranking_average_precision"])),
             ("coverage error", f"{m['coverage_error']:.2f}")]
    for name, d in (("at the tags' thresholds", at), ("at 0.5", plain)):
        rows += [(f"{k.replace('_', ' ')} {name}", _num(v)) for k, v in d.items()]
    return rows


# evaluation/tasks.py's entry points for several tags per image: the task's thresholds and calibration applied here.
def tag_evaluation_metrics(y: np.ndarray, probs: np.ndarray, predictor, split: str, notes: list[str]) -> dict:
    task = predictor.task
    metrics, more = tag_metrics(y, probs, predictor.classes, task.threshold_array(len(predictor.classes)), split,
                                None if task.calibration_scale is None else task.uncalibrated(probs))
    notes += more
    return metrics


def write_tag_evaluation_predictions(path: Path, paths: list[str], y: np.ndarray, probs: np.ndarray, predictor) -> None:
    write_tag_predictions(path, paths, y, probs, predictor.task.decisions(probs), predictor.classes)


def tag_evaluation_figures(tensors, y: np.ndarray, probs: np.ndarray, metrics: dict[str, Any], predictor,
                           notes: list[str], explain, with_map: bool) -> dict[str, Any]:
    return {**tag_figures(y, probs, metrics, predictor.classes),
            **tag_galleries(tensors.images, y, probs, metrics, predictor.classes, explain=explain)}
