"""`imgclass compare RUN...`: runs side by side, as a text table and an HTML table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..modelfile import read_header, resolve_model_path
from ..rundir import RunDir

COLUMNS = ["run", "model", "strategy", "input size", "epochs", "train time (min)", "val accuracy", "test accuracy",
           "test macro F1", "test coarse accuracy"]


def compare_rows(runs: list[str | Path]) -> "Comparison":
    rows = Comparison()
    for r in runs:
        run = Path(r).expanduser()
        if not run.is_dir():
            raise UserError(f"not a run folder: {run}")
        header = read_header(resolve_model_path(run))
        results, cfg = RunDir(run).read_results(), RunDir(run).read_config_dict()
        acc = {k: v.get("accuracy") for k, v in results.get("metrics", {}).items()}
        f1 = coarse = None
        test_metrics = RunDir(run).eval_dir("test") / "metrics.json"
        if test_metrics.is_file():
            m = json.loads(test_metrics.read_text())
            f1, coarse = m["macro_f1"], m.get("coarse", {}).get("accuracy")
        rows.append({"run": str(run), "model": header["arch"]["name"],
                     "strategy": (header.get("hierarchy") or {}).get("strategy", "-"), "test coarse accuracy": coarse,
                     "input size": header["preprocessing"]["img_size"],
                     "epochs": f"{results.get('epochs_run', '?')}/"
                               f"{(results.get('plan') or {}).get('epochs', cfg.get('epochs', '?'))}",
                     "train time (min)": results.get("train_seconds", 0) / 60,
                     "val accuracy": acc.get("val"), "test accuracy": acc.get("test"), "test macro F1": f1})
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


class Comparison(list):
    """What compare returns: one row (a dict) per run, shown in a notebook as the comparison table."""

    def _repr_html_(self) -> str:
        from ..notebook import paragraphs, table
        v = verdict(self)
        return table(COLUMNS, [[_fmt(r[c]) for c in COLUMNS] for r in self]) + (paragraphs([v]) if v else "")


def compare_html(rows: list[dict[str, Any]]) -> str:
    """A page holding the notebook's table (inline styles, so it reads the same in both)."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>imgclass compare</title></head>"
            f"<body style='font-family:sans-serif'>{Comparison(rows)._repr_html_()}</body></html>")


def verdict(rows: list[dict[str, Any]]) -> str | None:
    """Which run (and hierarchy strategy) the comparison favours, by test accuracy, and by how much."""
    scored = sorted((r for r in rows if r["test accuracy"] is not None), key=lambda r: -r["test accuracy"])
    if len(scored) < 2:
        return None
    best, second = scored[0], scored[1]
    label = lambda r: r["run"] + (f" ({r['strategy']})" if r["strategy"] != "-" else "")  # noqa: E731
    return (f"favours {label(best)}: test accuracy {best['test accuracy']:.4f}, "
            f"{100 * (best['test accuracy'] - second['test accuracy']):+.1f} points over {label(second)}")


def compare_text(rows: list[dict[str, Any]]) -> str:
    cells = [COLUMNS] + [[_fmt(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    v = verdict(rows)
    return "\n".join(lines + ([v] if v else []))
