"""`imgclass compare RUN... --report DIR`: the course's written deliverable across models. A TL;DR of
at most 500 words made from the runs' own numbers (what was tried, what won on validation and by how much,
its test result, its weakest classes, next steps), the comparison table and the overlaid validation
curves, as report.md and a self-contained report.html."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.files import write_bytes_atomic, write_text_atomic
from ..core.rundir import RunDir
from .compare import Comparison
from ..core.figures import png_bytes, png_data_url
from .report import TLDR_WORD_LIMIT, inline_html, limit_words

WEAK_CLASSES = 3      # how many of the chosen run's weakest classes the summary names
OVERFIT_GAP = 0.10    # train accuracy this far above validation accuracy reads as overfitting
STILL_RISING = 3      # validation accuracy best in the last epoch and up over this many epochs: train longer


def _name(row: dict[str, Any], settings: list[str]) -> str:
    name = Path(row["run"]).name
    pairs = [f"{k}={_value(row.get(k))}" for k in settings]
    if all(p in name for p in pairs):  # a sweep's folders are named after their setting already
        return name
    return name + (f" ({', '.join(pairs)})" if pairs else "")


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _weakest(row: dict[str, Any]) -> tuple[str, list[tuple[str, float, int]]]:
    """The chosen run's weakest classes by F1, on its validation evaluation if it has one, else test."""
    for split in ("val", "test"):
        m = RunDir(Path(row["run"])).read_eval_metrics(split)
        if m is not None:
            per = m["per_class"]
            ranked = sorted((kv for kv in per.items() if kv[1]["f1"] < 1), key=lambda kv: kv[1]["f1"])[:WEAK_CLASSES]
            return split, [(c, m["f1"], m["support"]) for c, m in ranked]
    return "", []


def tldr(rows: Comparison) -> list[str]:
    settings = rows.settings
    models = sorted({r["model"] for r in rows})
    tried = (f"**What was tried.** {len(rows)} runs of {', '.join(models)}"
             + (f", differing in {', '.join(settings)}: " + "; ".join(_name(r, settings) for r in rows) + "."
                if settings else ", with the same settings."))
    paras = [tried]
    scored = sorted((r for r in rows if r.get("val accuracy") is not None), key=lambda r: -r["val accuracy"])
    if not scored:
        return paras + ["No run has a validation split, so none can be chosen fairly (the test split must not "
                        "choose): train with --val-split."]
    best = scored[0]
    verdict = rows.verdict() or ""
    tie = verdict.startswith("no verdict")
    won = f"**What won.** {_name(best, settings)}: validation accuracy {best['val accuracy']:.4f}"
    if tie:
        won = (f"**What won.** No single run: {_name(best, settings)} and {_name(scored[1], settings)} tie on "
               f"validation accuracy {best['val accuracy']:.4f}. The first of them")
    elif len(scored) > 1:
        won += f", {100 * (best['val accuracy'] - scored[1]['val accuracy']):+.1f} points over {_name(scored[1], settings)}"
        won += "; " + ("the margin is within the noise of the validation split" if "within the noise" in verdict
                       else "the margin is beyond the noise of the validation split")
    won += (" scores on the test split (which reports, never chooses): " if tie else
            ". It was chosen on validation; the test split only reports it: ")
    won += ("test accuracy n/a." if best.get("test accuracy") is None else
            f"test accuracy {best['test accuracy']:.4f}" + (f", macro F1 {best['test macro F1']:.4f}."
                                                           if best.get("test macro F1") is not None else "."))
    paras.append(won)
    split, weak = _weakest(best)
    if weak:
        paras.append(f"**Weakest classes** ({split} F1): " + ", ".join(f"{c} {f1:.3f} ({n} images)" for c, f1, n in weak)
                     + ".")
    steps = next_steps(rows, best, "within the noise" in verdict or tie, weak)
    if steps:
        text = "; ".join(steps)
        paras.append("**Next steps.** " + text[0].upper() + text[1:] + ".")
    return limit_words(paras, TLDR_WORD_LIMIT)


def next_steps(rows: Comparison, best: dict[str, Any], close: bool, weak: list) -> list[str]:
    """Advice read off the numbers: each rule says what it saw."""
    steps = []
    if close:
        steps.append("the leading runs are within noise: confirm with cross-validation (imgclass tune --cv 5) "
                     "or a larger validation split before choosing")
    history = rows.histories.get(best["run"], [])
    accs = [float(r["val_acc"]) for r in history if r.get("val_acc") not in (None, "", "nan")]
    if len(accs) > STILL_RISING and accs[-1] >= max(accs) and accs[-1] > accs[-1 - STILL_RISING]:
        steps.append(f"train longer: validation accuracy was still rising at the last epoch ({accs[-1]:.4f})")
    train = (RunDir(Path(best["run"])).read_results().get("metrics", {}).get("train") or {}).get("accuracy")
    if train is not None and train - best["val accuracy"] > OVERFIT_GAP:
        steps.append(f"it overfits (train accuracy {train:.4f} vs validation {best['val accuracy']:.4f}): stronger "
                     "augmentation, more data, or regularisation (dropout, weight decay)")
    elif train is not None and train < 0.8:
        steps.append(f"it underfits (train accuracy {train:.4f}): a larger model, more epochs or a higher "
                     "learning rate")
    for k in rows.settings:
        values = [r.get(k) for r in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and len(set(values)) > 2:
            if best.get(k) in (min(values), max(values)):
                steps.append(f"the best {k} ({best[k]}) is at the edge of the values tried: try beyond it")
    if weak:
        steps.append(f"look at the weakest classes' confusions and galleries in {Path(best['run']) / 'eval'}; "
                     f"more or cleaner images of {weak[0][0]} would help most")
    return steps


def write_summary(rows: Comparison, out_dir: str | Path) -> Path:
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    png = png_bytes(rows.curves())
    write_bytes_atomic(out / "val_curves.png", png)
    paras = tldr(rows)
    md = ["# imgclass: runs compared", "", "## TL;DR", ""] + [p + "\n" for p in paras]
    md += ["## The runs", "", "| " + " | ".join(rows.columns) + " |", "|" + " --- |" * len(rows.columns)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in rows.cells()]
    md += ["", "## Validation curves", "", "![validation curves](val_curves.png)", ""]
    write_text_atomic(out / "report.md", "\n".join(md))

    body = (["<h1>imgclass: runs compared</h1><h2>TL;DR</h2>"] + [f"<p>{inline_html(p)}</p>" for p in paras]
            + ["<h2>The runs</h2>", rows._repr_html_(), "<h2>Validation curves</h2>",
               f"<img style='max-width:100%' alt='validation curves' src='{png_data_url(png)}'>"])
    write_text_atomic(out / "report.html", "<!DOCTYPE html><html><head><meta charset='utf-8'><title>imgclass: runs "
                      "compared</title></head><body style='font-family:system-ui,sans-serif;"
                      f"max-width:1100px;margin:2em auto'>{''.join(body)}</body></html>")
    return out
