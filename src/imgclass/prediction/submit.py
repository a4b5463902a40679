"""Kaggle submission: one row per test image, ID from the file stem, TARGET the class."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.find import list_images, natural_key
from ..core import log
from ..core.errors import UserError
from ..core.spreadsheet import safe_row
from ..core.files import write_text_atomic
from ..inference.predictor import Predictor

if TYPE_CHECKING:
    from .ray_predict import RayJob


def _id_key(stem: str):
    # numeric ids in numeric order ("2" before "10"); otherwise natural order
    return (0, int(stem), "") if stem.isdigit() else (1, 0, natural_key(stem))


def submission_rows(predictor: Predictor, test_dir: str | Path, target: str = "index", batch_size: int = 64,
                    level: str = "fine", runtime: str | None = None, precision: str = "auto", form: str = "auto",
                    reject: bool | float | None = None, ray: "RayJob | None" = None, target_column: str = "TARGET"
                    ) -> tuple[list[str], list[tuple[str, ...]], list[tuple[str, str]]]:
    """(the columns after the id, rows of (id, cells...), errors of (path, reason)): the task's answer per test
    image (models/tasks: Task.submission), which also says what an unreadable image gets (the most common class;
    with several tags per image, no tag; a number, the training mean) and what form says (with several tags per
    image: "tags", one column of the tags given separated by spaces, or "onehot", a 0/1 column per tag).
    runtime (and precision): chosen for this many images as prediction.runtime says; None keeps the
    predictor's own. reject (True: the model file's threshold, or a threshold): images below it get "unknown"
    (--target label) or -1 (--target index) in every column, as predict and the service answer them. ray: score
    on Ray's workers instead (prediction/ray_predict.py), the same probabilities."""
    if target not in ("index", "label"):
        raise UserError("--target must be index or label")
    # a form or level the task does not take is refused here, before any image is read
    predictor.task.submission(np.zeros((0, len(predictor.classes)), np.float32), np.zeros(0, bool),
                              predictor.classes, level, target, form, None, target_column)
    rejection = predictor.rejection(reject)
    files = _test_files(test_dir)
    if runtime is not None:
        from ..inference.runtime import choose_runtime
        predictor.use(choose_runtime(predictor, runtime, precision, len(files)))
    feats: list[np.ndarray] | None = [] if rejection is not None and rejection.needs_features else None
    if ray is not None:
        from .ray_predict import ray_predict_proba
        probs, errors = ray_predict_proba(predictor, [str(f) for f in files], feats, ray.address, ray.workers)
    else:
        probs, errors = predictor.predict_proba(files, batch_size, feats)
    ok = ~np.isnan(probs).any(axis=1)
    bad = [(str(f), err) for f, err in zip(files, errors) if err is not None]
    unknown = None if rejection is None else ok & rejection.decide(
        np.nan_to_num(probs, nan=1.0), np.nan_to_num(feats[0]) if feats else None)[0]
    columns, cells = predictor.task.submission(probs, ok, predictor.classes, level, target, form, unknown,
                                               target_column)
    return columns, [(f.stem, *row) for f, row in zip(files, cells)], bad


def _test_files(test_dir: str | Path) -> list[Path]:
    """The test folder's images in id order; two sharing an id (a file stem) are refused."""
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
    return sorted(files, key=lambda f: _id_key(f.stem))


def write_submission(predictor: Predictor, test_dir: str | Path, out: str | Path, id_column: str = "ID",
                     target_column: str = "TARGET", target: str = "index", level: str = "fine",
                     runtime: str | None = None, precision: str = "auto", form: str = "auto",
                     reject: bool | float | None = None, ray: "RayJob | None" = None) -> tuple[Path, int, list]:
    """form: auto (the task's own), or with several tags per image tags or onehot (the tags given separated by
    spaces, or a 0/1 column per tag). ray: as submission_rows'."""
    columns, rows, bad = submission_rows(predictor, test_dir, target, level=level, runtime=runtime,
                                         precision=precision, form=form, reject=reject, ray=ray,
                                         target_column=target_column)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(safe_row([id_column] + columns))
    writer.writerows(safe_row(row) for row in rows)  # names as text in a spreadsheet, never formulas
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, buf.getvalue())  # a kill leaves the old file or the whole new one
    for path, reason in bad:
        log.warning(f"{path}: {reason} (given {predictor.task.unreadable_answer})")
    return out, len(rows), bad
