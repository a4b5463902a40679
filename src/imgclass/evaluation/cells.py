"""What the workbench (`imgclass app`) shows of one evaluated split, for each task, read from its predictions.csv:
the picture's data (a confusion matrix for classes, a table of tags, a scatter of numbers) and the images behind each
of its cells, as row numbers of predictions.csv in the order they are shown. evaluation/tasks.py registers one of
these per task, so the workbench never asks which task a run has.

Written for large splits: one pass over the rows, no per-cell copies of the rows (a 100,000-row split is read and
grouped in well under a second; bench/workbench_gallery.py measures it)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SCATTER_POINTS = 3000  # points a number's scatter sends at most (evenly spaced over the rows: the page stays light)


@dataclass(frozen=True)
class Cells:
    view: dict[str, Any]                       # what the page draws; view["kind"]: matrix, tags or scatter
    members: dict[str, list[int]] = field(default_factory=dict)  # a cell's key -> its rows, in the order shown
    titles: dict[str, str] = field(default_factory=dict)         # a cell's key -> what its images are, in words
    lists: tuple[str, ...] = ()                                  # the keys offered as lists beside the picture

    def rows(self, key: str) -> list[int] | None:
        """The rows behind one cell, or None for a key this picture has no cell for."""
        return self.members.get(key)


def prob_names(fieldnames: list[str]) -> list[str]:
    """The names of the prob_<name> columns, in the file's order (the model's classes or tags)."""
    return [c[len("prob_"):] for c in fieldnames if c.startswith("prob_")]


def class_cells(rows: list[dict[str, str]], fieldnames: list[str]) -> Cells:
    """A confusion matrix (true label x prediction) whose cells open their images, most confident first; and per class
    its most confident mistakes and its least confident right answers."""
    classes = prob_names(fieldnames)
    seen = {c for r in rows for c in (r["label"], r["prediction"])}
    classes += sorted(seen - set(classes))
    index = {c: i for i, c in enumerate(classes)}
    n = len(classes)
    counts = [[0] * n for _ in range(n)]
    cells: dict[str, list[int]] = {}
    confidence = [float(r.get("confidence") or 0.0) for r in rows]
    for k, r in enumerate(rows):
        i, j = index[r["label"]], index[r["prediction"]]
        counts[i][j] += 1
        cells.setdefault(f"cell:{i}:{j}", []).append(k)
    members, titles = {}, {}
    for key, found in cells.items():
        _, i, j = key.split(":")
        members[key] = sorted(found, key=lambda k: -confidence[k])
        titles[key] = f"true {classes[int(i)]}, predicted {classes[int(j)]}"
    for i, c in enumerate(classes):
        wrong = [k for j in range(n) if j != i for k in cells.get(f"cell:{i}:{j}", [])]
        members[f"wrong:{i}"] = sorted(wrong, key=lambda k: -confidence[k])
        titles[f"wrong:{i}"] = f"{c}: the most confident mistakes"
        members[f"unsure:{i}"] = sorted(cells.get(f"cell:{i}:{i}", []), key=lambda k: confidence[k])
        titles[f"unsure:{i}"] = f"{c}: the least confident right answers"
    view = {"kind": "matrix", "classes": classes, "counts": counts}
    lists = tuple(f"{what}:{i}" for i in range(n) for what in ("wrong", "unsure"))
    return Cells(view, members, titles, lists)


def tag_cells(rows: list[dict[str, str]], fieldnames: list[str]) -> Cells:
    """A table with one line per tag (images that have it, given it rightly, wrongly, missed), each count opening its
    images: given wrongly and rightly most probable first, missed least probable first."""
    names = prob_names(fieldnames)
    truth = [set(json.loads(r["labels"])) for r in rows]
    given = [set(json.loads(r["predicted"])) for r in rows]
    members, titles, table = {}, {}, []
    for t, name in enumerate(names):
        prob = [float(r.get(f"prob_{name}") or 0.0) for r in rows]
        groups = {"tp": [], "fp": [], "fn": []}
        for k in range(len(rows)):
            has, said = name in truth[k], name in given[k]
            if has or said:
                groups["tp" if has and said else "fn" if has else "fp"].append(k)
        for what, words in (("tp", "given rightly"), ("fp", "given wrongly"), ("fn", "missed")):
            members[f"{what}:{t}"] = sorted(groups[what], key=lambda k: prob[k] if what == "fn" else -prob[k])
            titles[f"{what}:{t}"] = f"{name}: {words}"
        table.append({"tag": name, "images": len(groups["tp"]) + len(groups["fn"]), "tp": len(groups["tp"]),
                      "fp": len(groups["fp"]), "fn": len(groups["fn"])})
    return Cells({"kind": "tags", "tags": table}, members, titles)


def number_cells(rows: list[dict[str, str]], fieldnames: list[str]) -> Cells:
    """A scatter of predicted against true numbers whose points open their image; and the largest errors."""
    truth = [float(r["label"]) for r in rows]
    pred = [float(r["prediction"]) for r in rows]
    step = max(1, -(-len(rows) // SCATTER_POINTS))
    points = [[truth[k], pred[k], k] for k in range(0, len(rows), step)]
    members = {f"point:{k}": [k] for _, _, k in points}
    titles = {f"point:{k}": f"{rows[k]['path']}: true {truth[k]:g}, predicted {pred[k]:.3g}" for _, _, k in points}
    members["errors"] = sorted(range(len(rows)), key=lambda k: -abs(pred[k] - truth[k]))
    titles["errors"] = "the largest errors"
    return Cells({"kind": "scatter", "points": points, "shown": len(points), "rows": len(rows)}, members, titles,
                 ("errors",))


# What a comparison of runs shows per class or tag (the workbench's "per-class differences"), from metrics.json:
def class_item_scores(metrics: dict[str, Any]) -> tuple[str, dict[str, float]]:
    return "F1", {c: v["f1"] for c, v in (metrics.get("per_class") or {}).items()}


def tag_item_scores(metrics: dict[str, Any]) -> tuple[str, dict[str, float]]:
    return "AP", {t: v["ap"] for t, v in (metrics.get("per_tag") or {}).items() if v.get("ap") is not None}


def no_item_scores(metrics: dict[str, Any]) -> tuple[str, dict[str, float]]:
    return "", {}  # a number per image has no classes
