"""`imgclass compare RUN...`: runs side by side, fairly: the settings that differ between them as columns,
the choice made on validation accuracy (test shown, never used to choose), overlaid validation curves."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.figures import png_data_url
from ..models.modelfile import read_header, resolve_model_path
from ..core.rundir import RunDir

COLUMNS = ["run", "model", "strategy", "input size", "epochs", "train time (min)", "val accuracy", "test accuracy",
           "test macro F1", "test coarse accuracy", "val MAE", "test MAE", "test R²"]
# columns the runs' tasks fill (Task.compare_cells): each shown when a run's task gives it
TASK_COLUMNS = ("val accuracy", "test accuracy", "test macro F1", "test coarse accuracy", "val MAE", "test MAE",
                "test R²")
# config.yaml keys that never change what a run learns: where it writes, what it shows, how it decodes
NOT_SETTINGS = {"out", "verbose", "tensorboard", "evaluate", "cache", "cache_dir", "stream", "workers", "device"}
# columns where more is better: --sort orders them from the best down; any other column from the smallest up
SCORES = {"val accuracy", "test accuracy", "test macro F1", "test coarse accuracy", "test R²"}


class Comparison(list):
    """What compare returns: one row (a dict) per run, shown in a notebook as the comparison table.
    settings: the config keys whose values differ between the runs (each also a key of every row);
    histories: run -> its metrics.csv rows, for the overlaid validation curves."""

    def __init__(self, rows=(), settings: list[str] | None = None, histories: dict[str, list] | None = None):
        super().__init__(rows)
        self.settings = settings or []
        self.histories = histories or {}

    @property
    def columns(self) -> list[str]:
        """Model, the differing settings, then the rest: the scores the runs' tasks give (a class's accuracy, a
        number's MAE), and the strategy only when a run has two levels."""
        given = {c for r in self for c in r}
        two_level = any(r.get("strategy", "-") != "-" for r in self)
        rest = [c for c in COLUMNS[2:] if (c in given if c in TASK_COLUMNS else c != "strategy" or two_level)]
        return COLUMNS[:2] + self.settings + rest

    def cells(self) -> list[list[str]]:
        return [[_fmt(r.get(c)) for c in self.columns] for r in self]

    def verdict(self) -> str | None:
        return verdict(self)

    def curves(self):
        """The validation accuracy and loss of every run per epoch, overlaid (a matplotlib Figure)."""
        from .plots import validation_curves
        return validation_curves(self.histories)

    def _repr_html_(self) -> str:
        from ..core.notebook import paragraphs, table
        v = self.verdict()
        return table(self.columns, self.cells()) + (paragraphs([v]) if v else "")


def compare_rows(runs: list[str | Path], sort: str | None = None) -> Comparison:
    rows, configs, histories = [], [], {}
    for r in runs:
        run = Path(r).expanduser()
        if not run.is_dir():
            raise UserError(f"not a run folder: {run}")
        rd = RunDir(run)
        header = read_header(resolve_model_path(run))
        results, cfg = rd.read_results(), rd.read_config_dict()
        final = results.get("metrics", {})
        rows.append({"run": str(run), "model": header.arch.name, "strategy": header.task.variant or "-",
                     "input size": header.img_size,
                     "epochs": f"{results.get('epochs_run', '?')}/"
                               f"{(results.get('plan') or {}).get('epochs', cfg.get('epochs', '?'))}",
                     "train time (min)": results.get("train_seconds", 0) / 60,
                     "val images": (final.get("val") or {}).get("n"),
                     **header.task.compare_cells(final, rd.read_eval_metrics("test"))})
        configs.append(cfg)
        histories[str(run)] = rd.read_history() if rd.metrics.is_file() else []
    settings = differing_settings(configs)
    for row, cfg in zip(rows, configs):
        row.update({k: cfg.get(k) for k in settings})
    table = Comparison(rows, settings, histories)
    return sort_rows(table, sort) if sort else table


def differing_settings(configs: list[dict[str, Any]]) -> list[str]:
    """The config keys (in config order) whose values are not the same in every run."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if k not in NOT_SETTINGS
            and len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]


def sort_rows(rows: Comparison, column: str) -> Comparison:
    """Rows by one column (its name as shown, or with underscores: val_accuracy); scores best first,
    anything else smallest first; runs without a value last."""
    names = {c.replace(" ", "_").lower(): c for c in rows.columns}
    key = names.get(column.replace(" ", "_").lower())
    if key is None:
        raise UserError(f"--sort: no column {column!r}; one of: {', '.join(rows.columns)}")
    present = [r for r in rows if r.get(key) is not None]
    absent = [r for r in rows if r.get(key) is None]
    try:
        present.sort(key=lambda r: r[key], reverse=key in SCORES)
    except TypeError:  # mixed types in a settings column: compare them as text
        present.sort(key=lambda r: str(r[key]))
    return Comparison(present + absent, rows.settings, rows.histories)


def _label(row: dict[str, Any]) -> str:
    return row["run"] + (f" ({row['strategy']})" if row.get("strategy", "-") != "-" else "")


def verdict(rows: list[dict[str, Any]]) -> str | None:
    """Which run the comparison favours: the best validation accuracy (choosing on the test split would
    make its score optimistic), by how much, whether that is beyond the noise of the validation split,
    and its test accuracy for the record."""
    if any(r.get("val MAE") is not None for r in rows):  # a number per image: the lowest validation MAE
        return _mae_verdict(rows)
    scored = sorted((r for r in rows if r.get("val accuracy") is not None), key=lambda r: -r["val accuracy"])
    if len(scored) < 2:
        return None if len(rows) < 2 else "no verdict: fewer than two runs have a validation split to choose on"
    best, second = scored[0], scored[1]
    margin = best["val accuracy"] - second["val accuracy"]
    if margin == 0:
        return (f"no verdict: {_label(best)} and {_label(second)} tie on validation accuracy "
                f"{best['val accuracy']:.4f}")
    test = "" if best.get("test accuracy") is None else f"; its test accuracy {best['test accuracy']:.4f}"
    n = best.get("val images") or 0
    noise = ""
    if n:
        # the standard error of a difference of two accuracies on the same n images, at most
        # sqrt(2 p (1 - p) / n); under two of them the order could flip on another sample
        p = min(max((best["val accuracy"] + second["val accuracy"]) / 2, 0.5 / n), 1 - 0.5 / n)  # never 0 or 1
        se = math.sqrt(2 * p * (1 - p) / n)
        noise = (f" (within the noise of {n} validation images, about {200 * se:.1f} points)" if margin < 2 * se
                 else f" (beyond the noise of {n} validation images, about {200 * se:.1f} points)")
    return (f"favours {_label(best)} on validation accuracy {best['val accuracy']:.4f}, "
            f"{100 * margin:+.1f} points over {_label(second)}{noise}{test}")


def _mae_verdict(rows: list[dict[str, Any]]) -> str | None:
    """verdict for runs answering a number: the lowest validation MAE, by how much, its test MAE for the record."""
    scored = sorted((r for r in rows if r.get("val MAE") is not None), key=lambda r: r["val MAE"])
    if len(scored) < 2 or len(scored) < len(rows):
        return None if len(rows) < 2 else "no verdict: the runs are not all scored on a validation MAE"
    best, second = scored[0], scored[1]
    if best["val MAE"] == second["val MAE"]:
        return f"no verdict: {_label(best)} and {_label(second)} tie on validation MAE {best['val MAE']:.4g}"
    test = "" if best.get("test MAE") is None else f"; its test MAE {best['test MAE']:.4g}"
    return (f"favours {_label(best)} on validation MAE {best['val MAE']:.4g}, {second['val MAE'] - best['val MAE']:.3g} "
            f"lower than {_label(second)}{test}")


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2g}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def compare_text(rows: Comparison) -> str:
    cells = [rows.columns] + rows.cells()
    widths = [max(len(row[i]) for row in cells) for i in range(len(rows.columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    v = rows.verdict()
    return "\n".join(lines + ([v] if v else []))


def compare_html(rows: Comparison, curves_png: bytes | None = None) -> str:
    """A page holding the notebook's table (inline styles, so it reads the same in both) and the overlaid
    validation curves, embedded so the one file works offline."""
    img = ("" if curves_png is None else "<h2>Validation curves</h2><img style='max-width:100%' alt='validation "
           f"curves' src='{png_data_url(curves_png)}'>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>imgclass compare</title></head>"
            f"<body style='font-family:sans-serif'><h1>{html.escape(str(len(rows)))} runs compared</h1>"
            f"{rows._repr_html_()}{img}</body></html>")
