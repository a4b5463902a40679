"""Label review, as the workbench (`imgclass app`) runs it: a run's suspected label errors, for every task, and the
decisions a person makes about them, kept as the files `imgclass train --relabel FILE --exclude FILE` reads.

Suspects are found as `check --label-issues` finds them: every image of the run (splits.csv) embedded once by the
ImageNet backbone that installs with imgclass (not by the run's own model, whose features were fitted to the very
labels under suspicion), then out-of-fold answers of a linear model on the embeddings, per task:
- one class (or two levels): multinomial logistic regression, ranked by confident learning (cleanlab);
- tags: one-vs-rest logistic regression, ranked by cleanlab's multi-label confident learning (an image is suspect when its
  given tags are much less probable than such confusions are across the set); suggested: the tags over 0.5;
- a number: ridge regression; suspects are the largest out-of-fold residuals beyond SUSPECT_RESIDUAL robust standard
  deviations (1.4826 x the median absolute residual), suggested: the out-of-fold prediction.

Decisions are written as they are made: decisions.json first (every decision, keep included: the review resumes
from it), then relabel.csv and exclude.csv made from it; each file atomically, so a kill leaves each whole, and the
two derived files are made again from decisions.json at the next start."""
from __future__ import annotations

import csv
import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import UserError
from ..data.defaults import NEAR_COSINE
from ..core.files import write_text_atomic
from ..core.spreadsheet import safe_cell
from .label_issues import FOLDS, find_label_issues, out_of_fold_probabilities

REVIEW_FOLDER = "review"        # inside the run folder
DECISIONS_FILE = "decisions.json"
RELABEL_FILE = "relabel.csv"     # path,label: train --relabel
EXCLUDE_FILE = "exclude.csv"     # path: train --exclude
ACTIONS = ("keep", "relabel", "exclude")
SUSPECT_RESIDUAL = 2.5           # a number's suspects: residuals beyond this many robust standard deviations
TAG_GIVEN = 0.5                  # a tag is suggested when its out-of-fold probability reaches this


def _class_suspects(vectors: np.ndarray, cells: list[str]) -> list[dict[str, Any]]:
    names = sorted(set(cells))
    labels = np.array([names.index(c) for c in cells])
    oof = out_of_fold_probabilities(vectors, labels, FOLDS)
    return [{"index": i.index, "suggested_label": names[i.suggested], "quality": round(i.quality, 4),
             "given_probability": round(i.given_probability, 4),
             "suggested_probability": round(i.suggested_probability, 4)} for i in find_label_issues(oof.probs, labels)]


def _tag_suspects(vectors: np.ndarray, cells: list[str]) -> list[dict[str, Any]]:
    from cleanlab.multilabel_classification.filter import find_label_issues as cleanlab_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    given = [json.loads(c) for c in cells]
    names = sorted({t for g in given for t in g})
    if len(names) < 2:
        raise UserError("label review of tags needs at least two tags in the data")
    y = np.array([[int(n in g) for n in names] for g in given])
    head = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=0.1, max_iter=300)))
    probs = cross_val_predict(head, vectors, y, cv=KFold(min(FOLDS, len(y)), shuffle=True, random_state=0),
                              method="predict_proba")
    labels = [[names.index(t) for t in g] for g in given]
    flagged = cleanlab_issues(labels, probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, probs) if len(flagged) else []
    return [{"index": int(i), "suggested_label": json.dumps([n for n, p in zip(names, probs[i]) if p >= TAG_GIVEN],
                                                            ensure_ascii=False),
             "quality": round(float(quality[i]), 4)} for i in flagged]


def _number_suspects(vectors: np.ndarray, cells: list[str]) -> list[dict[str, Any]]:
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    y = np.array([float(c) for c in cells])
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 3, 9)))
    pred = cross_val_predict(model, vectors, y, cv=KFold(min(FOLDS, len(y)), shuffle=True, random_state=0))
    residual = pred - y
    spread = 1.4826 * float(np.median(np.abs(residual - np.median(residual)))) or 1e-12
    order = np.argsort(-np.abs(residual), kind="stable")
    return [{"index": int(i), "suggested_label": f"{pred[i]:.4g}", "quality": round(float(-abs(residual[i]) / spread), 4)}
            for i in order if abs(residual[i]) > SUSPECT_RESIDUAL * spread]


# per task (models/tasks' names): (embeddings, splits.csv's label cells) -> suspects, most suspect first
SUSPECTS: dict[str, Callable[[np.ndarray, list[str]], list[dict[str, Any]]]] = {
    "single-label": _class_suspects, "two-level": _class_suspects, "multi-label": _tag_suspects,
    "regression": _number_suspects}


def find_suspects(task_name: str, root: Path, rows: list[dict[str, str]], device: str = "auto",
                  near_cosine: float = NEAR_COSINE) -> list[dict[str, Any]]:
    """What a label review goes through, from splits.csv's rows (path, label, split) of images under root: the
    suspected label errors (reason "label": path, split, given_label, suggested_label, quality, lower is more
    suspect; most suspect first), then the near-duplicate pairs (reason "leakage" across splits, "near-duplicate"
    within one; other: the first copy; quality: their similarity)."""
    from ..prediction.embed import embed_rows
    from .similar import backbone
    rows = [r for r in rows if r["split"] != "excluded"]
    cells = sorted({r["label"] for r in rows})
    em = backbone(None, device)
    emb = embed_rows(em, root, [(r["path"], cells.index(r["label"])) for r in rows], cells)
    split_of = {r["path"]: r["split"] for r in rows}
    found = SUSPECTS[task_name](emb.vectors, list(emb.labels))
    labels = [{"path": emb.paths[s["index"]], "split": split_of[emb.paths[s["index"]]], "reason": "label",
               "given_label": emb.labels[s["index"]], **{k: v for k, v in s.items() if k != "index"}} for s in found]
    return labels + _copies(emb, split_of, near_cosine)


def _copies(emb, split_of: dict[str, str], near_cosine: float) -> list[dict[str, Any]]:
    """Near-duplicate pairs (check --embeddings' rule: curation/data_checks.py), copies in two splits (leakage)
    first, then the most similar, SHOWN_AT_MOST of them as check's gallery shows (a set of look-alike images, such
    as small digits, can hold thousands of pairs): each a suspect whose decision is about its second image
    (exclude: drop this copy)."""
    from .data_checks import SHOWN_AT_MOST, near_duplicate_pairs
    from .index import VectorIndex
    pairs, _ = near_duplicate_pairs(emb, VectorIndex(emb.vectors), split_of, near_cosine)
    label_of = dict(zip(emb.paths, emb.labels))
    pairs.sort(key=lambda p: (p["a_split"] == p["b_split"], -p["similarity"]))
    return [{"path": p["b"], "split": p["b_split"], "given_label": label_of[p["b"]], "suggested_label": "",
             "quality": p["similarity"], "reason": ("leakage" if p["a_split"] != p["b_split"] else "near-duplicate"),
             "other": p["a"], "other_split": p["a_split"]} for p in pairs[:SHOWN_AT_MOST]]


def read_suspects(file: str | Path) -> list[dict[str, Any]]:
    """Suspects from `check --label-issues`'s label_issues.csv (its columns as written there)."""
    from ..core.spreadsheet import read_cell
    with Path(file).expanduser().open(newline="", encoding="utf-8-sig") as fh:
        return [{k: read_cell(v or "") for k, v in row.items()} for row in csv.DictReader(fh)]


def write_suspects(file: Path, suspects: list[dict[str, Any]]) -> None:
    """The suspects found (find_suspects' rows) as a CSV that read_suspects reads back, written atomically."""
    columns = list(dict.fromkeys(k for s in suspects for k in s)) or ["path", "split", "given_label",
                                                                        "suggested_label", "quality"]
    file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(file, _csv(columns, [[s.get(c, "") for c in columns] for s in suspects]))


@dataclass(frozen=True)
class Decision:
    path: str
    action: str          # keep, relabel or exclude
    label: str | None    # relabel: the new label, as splits.csv writes labels


class Decisions:
    """The decisions of one review folder, each saved as it is made (see the module's docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        self._lock = threading.Lock()
        path = self.folder / DECISIONS_FILE
        self._by_path: dict[str, Decision] = {}
        if path.is_file():
            for d in json.loads(path.read_text()).get("decisions", []):
                self._by_path[d["path"]] = Decision(d["path"], d["action"], d.get("label"))
            self._write_derived()

    @property
    def relabel_file(self) -> Path:
        return self.folder / RELABEL_FILE

    @property
    def exclude_file(self) -> Path:
        return self.folder / EXCLUDE_FILE

    def all(self) -> dict[str, Decision]:
        return dict(self._by_path)

    def decide(self, path: str, action: str, label: str | None = None) -> Decision:
        if action not in ACTIONS:
            raise UserError(f"unknown decision '{action}': one of {', '.join(ACTIONS)}")
        if action == "relabel" and not (label or "").strip():
            raise UserError("a relabel decision needs the new label")
        decision = Decision(path, action, label.strip() if action == "relabel" and label else None)
        with self._lock:
            self._by_path[path] = decision
            self._save()
        return decision

    def undo(self, path: str) -> None:
        with self._lock:
            if self._by_path.pop(path, None) is not None:
                self._save()

    def _save(self) -> None:
        """decisions.json, then the two files made from it (each atomically)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.folder / DECISIONS_FILE, json.dumps(
            {"decisions": [vars(d) for d in self._by_path.values()]}, indent=1, ensure_ascii=False) + "\n")
        self._write_derived()

    def _write_derived(self) -> None:
        relabel = [d for d in self._by_path.values() if d.action == "relabel"]
        exclude = [d for d in self._by_path.values() if d.action == "exclude"]
        write_text_atomic(self.relabel_file, _csv(["path", "label"], [[d.path, d.label] for d in relabel]))
        write_text_atomic(self.exclude_file, _csv(["path"], [[d.path] for d in exclude]))


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[safe_cell(v) for v in row] for row in rows])  # a name never runs as a spreadsheet formula
    return buffer.getvalue()
