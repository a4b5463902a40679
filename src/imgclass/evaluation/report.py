"""report.md and report.html: a TL;DR of at most 500 words written from this run's numbers
(data, model and training, results, diagnosis, next steps), then every figure with one line
on how to read it. The HTML embeds its figures, so it is one file that opens offline."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


from ..models.header import ModelHeader
from ..core.figures import png_data_url
from ..core.files import write_text_atomic
from ..core.rundir import RunDir, best_epoch_phrase

TLDR_WORD_LIMIT = 500

FIGURE_GUIDE = {
    "data_map": "The images placed by their embeddings (t-SNE): near points look alike to the model. Mistakes are "
                "crosses; an island of one colour inside another, or a class in several islands, is worth a look.",
    "training_curves": "Loss and accuracy per epoch for training and validation, and the learning rate: a widening "
                       "gap between the train and validation lines means over-fitting.",
    "confusion_matrix": "Rows are true classes, columns predictions; the diagonal counts correct answers, any other "
                        "cell counts one kind of mistake.",
    "confusion_matrix_normalized": "The same matrix with each row divided by its class size: the diagonal is each "
                                   "class's recall, so small classes are as visible as large ones.",
    "roc_curves": "For each class against the rest, true against false positive rate as the threshold moves; the "
                  "closer to the top-left corner (AUC near 1), the better the ranking.",
    "pr_curves": "Precision against recall per class as the threshold moves; the area (AP) stays honest when a class "
                 "is rare.",
    "f1_per_class": "F1 (the balance of precision and recall) per class, weakest at the bottom: where to look first.",
    "reliability": "Accuracy against confidence in bins: bars below the diagonal mean the model is over-confident, "
                   "above it under-confident; ECE is the average gap.",
    "reliability_uncalibrated": "The same diagram for the probabilities before the softmax temperature fitted on "
                                "validation: what calibration corrected.",
    "pr_curves_tags": "Precision against recall as each tag's threshold moves, for the tags with the lowest average "
                      "precision, and (dashed) all tags pooled: the higher and further right, the better.",
    "ap_vs_frequency": "Each tag's average precision against how many images carry it: rare tags are usually the "
                       "weak ones; a frequent tag low here is hard for the model, not short of examples.",
    "f1_per_tag": "F1 per tag at the threshold chosen for it on validation, weakest at the bottom.",
    "gallery_false_positives": "For each tag (weakest first), the images without it that the model gives it most "
                               "confidently, and under them the heatmap of that tag: wrong labels, or what misleads it.",
    "gallery_false_negatives": "For each tag, the images with it that the model misses, the lowest probability first, "
                               "and the heatmap of that tag: what the model fails to see.",
    "f1_vs_threshold": "How each of the weakest tags' F1 changes with its threshold; the dotted line is the threshold "
                       "chosen on validation: a flat top means the choice matters little, a sharp peak that it does.",
    "co_occurrence": "How many images carry both of two tags (the most frequent 15), in the labels (left) and in the "
                     "model's answers (right): a pair much darker on the right is over-predicted together.",
    "gallery_confident_correct": "For each class (one row), its images the model gets right with the highest "
                                 "confidence: what it has learnt best. Under each: the prediction and its probability.",
    "gallery_least_confident": "For each class, its images with the lowest top probability, closest to the decision "
                               "boundary: often ambiguous or mislabelled.",
    "gallery_top_losses": "For each class, its images the model gets wrong most confidently (under each: what it said): "
                          "check these for wrong labels first, then for what the model confuses.",
    "predicted_vs_true": "Each image's predicted number against its true one: on the dashed line the answer is exact; "
                         "a cloud flatter than the line means the model pulls answers towards the mean.",
    "residuals": "The errors (prediction - truth): centred on 0 means no bias; long tails are the images worth a look.",
    "gallery_largest_errors": "The images with the largest errors, largest first (true and predicted under each): check "
                              "their labels first, then what they have in common.",
}


@dataclass
class RunContext:
    """What the report says about the run that made the model (empty for a bare model file)."""
    config: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    split_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> count
    header: ModelHeader | None = None  # the model file's (None: none known)
    bad_files: list[dict[str, str]] = field(default_factory=list)  # files the run skipped (RUN/bad_files.csv)

    @classmethod
    def load(cls, run_dir: Path | None, header: ModelHeader) -> "RunContext":
        ctx = cls(header=header)
        if run_dir is None:
            ctx.results = {"metrics": {k: v for k, v in header.metrics.items() if isinstance(v, dict)}}
            return ctx
        run = RunDir(run_dir)
        ctx.config, ctx.results = run.read_config_dict(), run.read_results()
        ctx.history, ctx.bad_files = run.read_history(), run.read_csv(run.bad_files)
        ctx.split_counts = run.split_counts() if run.splits.is_file() else {}
        return ctx


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def tldr(metrics: dict[str, Any], notes: list[str], ctx: RunContext,
         results_more: Callable[[dict[str, Any]], str] = lambda metrics: "") -> list[str]:
    """Paragraphs of the TL;DR, from the numbers of this run only: data, model, results (results_more: what a task
    adds to them, two levels' coarse level), diagnosis."""
    acc = {k: v.get("accuracy") for k, v in ctx.results.get("metrics", {}).items()}
    acc[metrics["split"]] = metrics["accuracy"]
    paras = [_data_paragraph(metrics, ctx)]
    if ctx.header is not None:
        paras.append(_model_paragraph(ctx))
    paras.append(_results_paragraph(metrics, acc, results_more))
    paras += _diagnosis_paragraphs(metrics, notes, ctx, acc)
    return limit_words(paras, TLDR_WORD_LIMIT)


def _imbalance(ctx: RunContext) -> float | None:
    counts = ctx.split_counts.get("train", {})
    return max(counts.values()) / max(min(counts.values()), 1) if counts else None


def _data_paragraph(metrics: dict[str, Any], ctx: RunContext) -> str:
    train_counts = ctx.split_counts.get("train", {})
    sizes = ", ".join(f"{s} {sum(c.values())}" for s, c in ctx.split_counts.items() if s != "excluded")
    data = f"**Data.** {len(metrics['classes'])} classes; {metrics['n']} images evaluated in the {metrics['split']} split"
    data += f" (splits: {sizes})." if sizes else "."
    if train_counts:
        rare = min(train_counts, key=train_counts.get)
        data += (f" Training images per class range from {min(train_counts.values())} ('{rare}') to "
                 f"{max(train_counts.values())}: an imbalance ratio of {_imbalance(ctx):.1f}.")
    if metrics.get("unreadable"):
        data += f" {len(metrics['unreadable'])} file(s) of this split could not be read and were left out."
    if ctx.bad_files:
        data += f" The run skipped {len(ctx.bad_files)} unusable file(s) in all (listed below)."
    if excluded := sum(ctx.split_counts.get("excluded", {}).values()):
        data += f" {excluded} image(s) were left out by --exclude (splits.csv lists them as 'excluded')."
    return data


def _model_paragraph(ctx: RunContext) -> str:
    arch, pre = ctx.header.arch, ctx.header.preprocessing
    model = f"**Model.** {arch.name} {arch.args or ''}".rstrip() + f" at {pre.img_size} px"
    model += f" (resize policy {pre.resize})"
    w = ctx.header.weights
    model += (f", fine-tuned from {w.get('dataset')} weights ({w.get('source')}: {w.get('location')}; licence "
              f"{w.get('licence')})" if w else ", trained from scratch")
    res = ctx.results
    used = {**ctx.config, **(res.get("plan") or {})}  # config.yaml as asked; the plan as decided in the run
    if ctx.config:
        model += (f", augmentation '{used.get('augment')}', optimizer {used.get('optimizer')}, "
                  f"batch size {used.get('batch_size')}")
    if res.get("epochs_run"):
        model += (f"; trained {res['epochs_run']} of {used.get('epochs', res['epochs_run'])} epochs in "
                  f"{res.get('train_seconds', 0) / 60:.1f} min ({run_ending(res, used)}), best validation accuracy "
                  f"at {best_epoch_phrase(res)}")
    return model + "."


def run_ending(res: dict[str, Any], used: dict[str, Any]) -> str:
    """How training ended, in words: the plan completed, the time budget's deadline (on plan or short of it),
    early stopping, or a tuner's pruning (results.json's stop_reason and epochs)."""
    reason, ran = res.get("stop_reason") or "", res.get("epochs_run", 0)
    planned = used.get("epochs", ran)
    if not reason:
        return "the planned epochs completed" if ran >= planned else "ended before its planned epochs"
    if reason == "time budget reached":
        if ran >= planned:
            return f"on plan: the time budget's deadline came in the last planned epoch ({res.get('time_budget')})"
        return f"the time budget ({res.get('time_budget')}) ended it after {ran} of {planned} planned epochs"
    if reason.startswith("time budget: "):  # the loop fitted its plan to the budget's time left
        return f"{reason.split(': ', 1)[1]} in the time budget ({res.get('time_budget')}); the schedule ended with them"
    if reason.startswith("early stopping"):
        return f"stopped early: {reason.split(':', 1)[1].strip()}"
    return reason


def _results_paragraph(metrics: dict[str, Any], acc: dict[str, float],
                       results_more: Callable[[dict[str, Any]], str] = lambda metrics: "") -> str:
    per, split = metrics["per_class"], metrics["split"]
    weakest = sorted(per, key=lambda c: (per[c]["f1"], c))[:3]
    line = "**Results.** Accuracy " + ", ".join(f"{s} {_pct(acc[s])}" for s in ("train", "val", "test") if s in acc)
    line += (f". On {split}: macro F1 {metrics['macro_f1']:.3f}, balanced accuracy {_pct(metrics['balanced_accuracy'])}"
             f", ROC AUC (macro) {metrics['roc_auc_macro']:.3f}" if metrics["roc_auc_macro"] is not None else "")
    line += ". Weakest classes by F1: " + ", ".join(f"{c} ({per[c]['f1']:.2f})" for c in weakest) + "."
    confused = metrics.get("most_confused", [])[:3]
    if confused:
        line += " Most confused: " + "; ".join(f"{p['true']} taken for {p['predicted']} {p['count']}x"
                                              for p in confused) + "."
    line += results_more(metrics)
    line += (f" Calibration: mean confidence {_pct(metrics['mean_confidence'])} against accuracy "
             f"{_pct(metrics['accuracy'])} (ECE {metrics['ece']:.3f}).")
    cal = metrics.get("calibration")
    if cal:
        line += (f" The probabilities are divided by a softmax temperature of {cal['temperature']:.3f} fitted on "
                 f"the validation split; before it, this split's ECE was {cal['ece_uncalibrated']:.3f} "
                 f"(see the two reliability diagrams).")
    return line


def _diagnosis_paragraphs(metrics: dict[str, Any], notes: list[str], ctx: RunContext,
                          acc: dict[str, float]) -> list[str]:
    diagnosis, steps = [], []
    train_counts, imbalance = ctx.split_counts.get("train", {}), _imbalance(ctx)
    confused = metrics.get("most_confused", [])[:3]
    tr, va = acc.get("train"), acc.get("val", acc.get("test"))
    if tr is not None and va is not None and tr - va > 0.08:
        diagnosis.append(f"over-fitting (train {_pct(tr)} vs validation {_pct(va)})")
        steps.append("stronger augmentation (`--augment strong`), more dropout or weight decay, or more images")
    elif tr is not None and tr < 0.9:
        diagnosis.append(f"under-fitting (train accuracy only {_pct(tr)})")
        longer = "a longer `--time-budget`" if ctx.results.get("time_budget") else "train longer (`--epochs`)"
        steps.append(f"{longer}, use a larger model (`--model-args width=...`) or a larger input size")
    if imbalance is not None and imbalance > 3:
        diagnosis.append(f"class imbalance ({imbalance:.1f}x)")
        steps.append(f"collect more images of the rare classes (e.g. '{min(train_counts, key=train_counts.get)}') "
                     f"and watch balanced accuracy rather than accuracy")
    if train_counts and min(train_counts.values()) < 50:
        diagnosis.append("little data for some classes (fewer than 50 training images)")
        pretrained = ctx.header is not None and ctx.header.weights
        steps.append("add images of them" if pretrained else  # (advice only what the run has not already done)
                     "add images, or start from a pretrained backbone (`--model timm:NAME`)")
    if metrics["ece"] > 0.05:
        side = "over" if metrics["mean_confidence"] > metrics["accuracy"] else "under"
        diagnosis.append(f"{side}-confident probabilities (ECE {metrics['ece']:.3f})")
        steps.append("treat probabilities as scores before thresholding" if metrics.get("calibration") else
                     "treat probabilities as scores, or calibrate them (train without --no-calibrate, with a "
                     "validation split)")
    if confused:
        steps.append(f"inspect the '{confused[0]['true']}' / '{confused[0]['predicted']}' confusions in the top-losses "
                     f"gallery for mislabelled images")
    if notes:
        diagnosis.append("see warnings: " + "; ".join(notes))
    paras = ["**Diagnosis.** " + ("; ".join(diagnosis) if diagnosis else "no clear over- or under-fitting, "
                                  "imbalance or calibration problem in these numbers") + "."]
    if steps:
        paras.append("**Next steps.** " + "; ".join(s[0].upper() + s[1:] for s in steps) + ".")
    return paras


def limit_words(paras: list[str], limit: int) -> list[str]:
    out, used = [], 0
    for p in paras:
        words = p.split()
        if used + len(words) > limit:
            out.append(" ".join(words[:max(0, limit - used - 1)]) + " ...")
            break
        out.append(p)
        used += len(words)
    return out


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    keys = ["accuracy", "balanced_accuracy", "top3_accuracy", "top5_accuracy", "macro_f1", "weighted_f1",
            "roc_auc_macro", "log_loss", "ece"]
    return [(k, "n/a" if metrics.get(k) is None else f"{metrics[k]:.4f}") for k in keys if k in metrics]


def inline_html(text: str) -> str:
    """A TL;DR paragraph's markdown (**bold**, `code`) as HTML: escaped, bold kept, backticks dropped."""
    text = html.escape(text)
    while "**" in text:
        text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
    return text.replace("`", "")


def write_report(out_dir: Path, metrics: dict[str, Any], notes: list[str], figures: dict[str, Path],
                 ctx: RunContext, results_more: Callable[[dict[str, Any]], str] = lambda metrics: "") -> None:
    """report.md and report.html for classes (results_more: as tldr's)."""
    title = f"imgclass evaluation: {metrics['split']} split"
    paras = tldr(metrics, notes, ctx, results_more)
    per = metrics["per_class"]
    # Markdown
    md = [f"# {title}", "", "## TL;DR", ""]
    for p in paras:
        md += [p, ""]
    md += ["## Metrics", "", "| metric | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in _metric_rows(metrics)]
    md += ["", "## Per class", "", "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    md += [f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |" for c, v in per.items()]
    md += ["", "## Most confused pairs", "", "| true | predicted | count | share of true class |", "| --- | --- | --- | --- |"]
    md += [f"| {p['true']} | {p['predicted']} | {p['count']} | {_pct(p['share_of_true'])} |"
           for p in metrics["most_confused"]] or ["| (none) | | | |"]
    if metrics.get("unreadable"):
        md += ["", "## Unreadable files", ""] + [f"- `{u['path']}`: {u['reason']}" for u in metrics["unreadable"]]
    if ctx.bad_files:
        md += ["", "## Files skipped by the run", "", "| path | split | reason |", "| --- | --- | --- |"]
        md += [f"| `{b['path']}` | {b['split']} | {b['reason']} |" for b in ctx.bad_files]
    md += figure_sections_md(figures)
    write_text_atomic(out_dir / "report.md", "\n".join(md))

    # HTML, figures embedded as base64 so the one file works offline
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>TL;DR</h2>"] + [f"<p>{inline_html(p)}</p>" for p in paras]
    body += ["<h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>"]
    body += [f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in _metric_rows(metrics)] + ["</table>"]
    body += ["<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"]
    body += [f"<tr><td>{html.escape(c)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
             f"<td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>" for c, v in per.items()] + ["</table>"]
    body += ["<h2>Most confused pairs</h2><table><tr><th>true</th><th>predicted</th><th>count</th><th>share</th></tr>"]
    body += [f"<tr><td>{html.escape(p['true'])}</td><td>{html.escape(p['predicted'])}</td><td>{p['count']}</td>"
             f"<td>{_pct(p['share_of_true'])}</td></tr>" for p in metrics["most_confused"]] + ["</table>"]
    if metrics.get("unreadable"):
        body += ["<h2>Unreadable files</h2><ul>"] + [f"<li><code>{html.escape(u['path'])}</code>: "
                                                     f"{html.escape(u['reason'])}</li>" for u in metrics["unreadable"]]
        body += ["</ul>"]
    if ctx.bad_files:
        body += ["<h2>Files skipped by the run</h2><table><tr><th>path</th><th>split</th><th>reason</th></tr>"]
        body += [f"<tr><td><code>{html.escape(b['path'])}</code></td><td>{html.escape(b['split'])}</td>"
                 f"<td>{html.escape(b['reason'])}</td></tr>" for b in ctx.bad_files] + ["</table>"]
    body += figure_sections_html(figures)
    write_text_atomic(out_dir / "report.html", html_page(title, body))


def figure_sections_md(figures: dict[str, Path]) -> list[str]:
    """The report's Figures section in Markdown: each figure with the line on how to read it."""
    md = ["", "## Figures", ""]
    for name, path in figures.items():
        md += [f"### {name.replace('_', ' ')}", "", FIGURE_GUIDE.get(name, ""), "", f"![{name}](figures/{path.name})", ""]
    return md


def figure_sections_html(figures: dict[str, Path]) -> list[str]:
    """The same in HTML, each PNG embedded (base64) so the one file works offline."""
    body = ["<h2>Figures</h2>"]
    for name, path in figures.items():
        body += [f"<h3>{name.replace('_', ' ')}</h3><p class='guide'>{html.escape(FIGURE_GUIDE.get(name, ''))}</p>",
                 f"<img alt='{name}' src='{png_data_url(path.read_bytes())}'>"]
    return body


def html_page(title: str, body: list[str]) -> str:
    """A self-contained report page."""
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "img{max-width:100%}.guide{color:#555;font-style:italic}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
