"""Kaggle submission: one row per test image, ID from the file stem, TARGET the class."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.find import list_images, natural_key
from .. import log
from ..errors import UserError
from ..files import write_text_atomic
from ..models.reject import UNKNOWN
from .predictor import Predictor

if TYPE_CHECKING:
    from .ray_predict import RayJob


def _id_key(stem: str):
    # numeric ids in numeric order ("2" before "10"); otherwise natural order
    return (0, int(stem), "") if stem.isdigit() else (1, 0, natural_key(stem))


def submission_rows(predictor: Predictor, test_dir: str | Path, target: str = "index", batch_size: int = 64,
                    level: str = "fine", runtime: str | None = None, precision: str = "auto", form: str = "tags",
                    reject: bool | float | None = None, ray: "RayJob | None" = None
                    ) -> tuple[list[tuple[str, ...]], list[tuple[str, str]]]:
    """(rows of (id, target), errors of (path, reason)). Unreadable images get the most common prediction
    (with several tags per image: no tag). form, with several tags per image: "tags" (one column, the tags given
    separated by spaces) or "onehot" (a 0/1 column per tag).
    runtime (and precision): chosen for this many images as prediction.runtime says; None keeps the
    predictor's own. reject (True: the model file's threshold, or a threshold): images below it get "unknown"
    (--target label) or -1 (--target index) in every column, as predict and the service answer them. ray: score
    on Ray's workers instead (prediction/ray_predict.py), the same probabilities."""
    rejection = predictor.rejection(reject)
    folder = Path(test_dir).expanduser()
    if not folder.is_dir():
        raise UserError(f"test folder not found: {folder}")
    files = list_images(folder)
    if not files:
        raise UserError(f"no images in {folder}")
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise UserError(f"two test images share the id '{f.stem}': {stems[f.stem]} and {f}")
        stems[f.stem] = f
    files = sorted(files, key=lambda f: _id_key(f.stem))
    if runtime is not None:
        from .runtime import choose_runtime
        predictor.use(choose_runtime(predictor, runtime, precision, len(files)))
    feats: list[np.ndarray] | None = [] if rejection is not None and rejection.needs_features else None
    if ray is not None:
        from .ray_predict import ray_predict_proba
        probs, errors = ray_predict_proba(predictor, [str(f) for f in files], feats, ray.address, ray.workers)
    else:
        probs, errors = predictor.predict_proba(files, batch_size, feats)
    ok = ~np.isnan(probs).any(axis=1)
    bad = [(str(f), err) for f, err in zip(files, errors) if err is not None]
    if not predictor.task.exclusive:
        return _tag_rows(predictor, files, probs, ok, target, form), bad
    columns = []
    for _, p, names in predictor.task.views(probs, predictor.classes, level):  # "both": coarse, then fine
        pred = np.where(ok, np.nan_to_num(p, nan=-1).argmax(axis=1), -1)
        fallback = int(np.bincount(pred[ok]).argmax()) if ok.any() else 0
        pred = np.where(ok, pred, fallback)  # Kaggle needs a row for every id: unreadable -> most common class
        column = [names[i] if target == "label" else str(int(i)) for i in pred]
        if rejection is not None:  # decided on the model's own classes' probabilities, whatever the level
            unknown = ok & rejection.decide(np.nan_to_num(probs, nan=1.0), np.nan_to_num(feats[0]) if feats else None)[0]
            column = [(UNKNOWN if target == "label" else "-1") if u else c for c, u in zip(column, unknown)]
        columns.append(column)
    rows = [(f.stem, *(col[i] for col in columns)) for i, f in enumerate(files)]
    return rows, bad


def _tag_rows(predictor: Predictor, files: list[Path], probs: np.ndarray, ok: np.ndarray, target: str,
              form: str) -> list[tuple[str, ...]]:
    """Several tags per image: the tags given at the model's thresholds (none for an unreadable image)."""
    given = predictor.task.decisions(np.nan_to_num(probs)) & ok[:, None]
    if form == "onehot":
        return [(f.stem, *(str(int(v)) for v in row)) for f, row in zip(files, given)]
    names = predictor.classes
    return [(f.stem, " ".join(names[j] if target == "label" else str(j) for j in np.flatnonzero(row)))
            for f, row in zip(files, given)]


def write_submission(predictor: Predictor, test_dir: str | Path, out: str | Path, id_column: str = "ID",
                     target_column: str = "TARGET", target: str = "index", level: str = "fine",
                     runtime: str | None = None, precision: str = "auto", form: str = "auto",
                     reject: bool | float | None = None, ray: "RayJob | None" = None) -> tuple[Path, int, list]:
    """form: auto (a class per image; with several tags per image "tags"), tags, or onehot (several tags per image:
    the tags given separated by spaces, or a 0/1 column per tag). ray: as submission_rows'."""
    if target not in ("index", "label"):
        raise UserError("--target must be index or label")
    if form not in ("auto", "tags", "onehot"):
        raise UserError("--format must be auto, tags or onehot")
    if form != "auto" and predictor.task.exclusive:
        raise UserError(f"--format {form} is for a model with several tags per image; this one gives one class")
    form = "tags" if form == "auto" else form
    rows, bad = submission_rows(predictor, test_dir, target, level=level, runtime=runtime, precision=precision,
                                form=form, reject=reject, ray=ray)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if form == "onehot" and not predictor.task.exclusive:
        columns = list(predictor.classes)
    else:
        columns = [f"{target_column}_COARSE", f"{target_column}_FINE"] if level == "both" else [target_column]
    writer.writerow([id_column] + columns)
    writer.writerows(rows)
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, buf.getvalue())  # a kill leaves the old file or the whole new one
    for path, reason in bad:
        log.warning(f"{path}: {reason} (given " + ("the most common class)" if predictor.task.exclusive else "no tag)"))
    return out, len(rows), bad
