"""Stratified train/val/test split, saved as RUN/splits.csv (path,label,split).

Written by hand rather than with sklearn's train_test_split because that raises on
classes with a single image; here such a class is kept in training with a warning.
The same files and seed give a byte-identical splits.csv.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from ..core.errors import DataError, UserError
from ..core.files import write_text_atomic
from .find import Found, natural_key

SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"  # splits.csv's split for images that --exclude left out


@dataclass
class Split:
    """The data for one run: class names and (relative path, label) per split; the label as its kind holds it
    (data/labels.py: a class index, a 0/1 tuple over the tags, a number)."""
    root: Path
    classes: list[str]
    items: dict[str, list[tuple[str, Any]]]
    kind: Any                      # the kind of label (data/labels.py)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (path, label) left out by --exclude: in no split

    def counts(self) -> dict[str, list[int]]:
        """Images per class (per tag; for numbers, all of them under the one output) in each split."""
        out = {}
        for split, rows in self.items.items():
            c = [0] * len(self.classes)
            for _, label in rows:
                for i in self.kind.counted(label):
                    c[i] += 1
            out[split] = c
        return out


def leave_out_untrained(split: Split, two_level: bool = False) -> tuple[Split, list[str]]:
    """The split without the classes (tags) that have no training image while others have some: such a class cannot
    be learnt, and a long tail makes them common (movie genres: one seen once in val and once in test, never in
    train). Its images leave val and test (with several tags, only the tag leaves: they keep their others); one
    note says which. Two-level labels keep them (their coarse classes hang on the fine ones) and are refused at
    decoding as before."""
    counts = split.counts().get("train") or []
    empty = [i for i, n in enumerate(counts) if n == 0]
    if not empty or len(empty) == len(counts) or two_level:
        return split, []
    keep = [i for i in range(len(counts)) if i not in empty]
    items = {name: [(rel, new) for rel, label in rows if (new := split.kind.kept(label, keep)) is not None]
             for name, rows in split.items.items()}
    names = [split.classes[i] for i in empty]
    gone = sum(len(rows) for rows in split.items.values()) - sum(len(rows) for rows in items.values())
    note = (f"left out of the model, with no training image to learn from: {', '.join(names[:10])}"
            f"{' ...' if len(names) > 10 else ''}" + (f"; their {gone} val/test image(s) leave the run too" if gone else
                                                      "; their images stay, with their other labels"))
    return Split(split.root, [split.classes[i] for i in keep], items, split.kind, list(split.excluded)), [note]


def stratified_sample(strata: np.ndarray, n: int, least: int, seed: int) -> np.ndarray:
    """n of the rows (sorted indices; a few more where the strata need them), seeded: each stratum keeps at least
    `least` rows where it has them, the rest drawn at random from all. strata: one value per row (a class, a
    quantile bin), or a 0/1 matrix (several tags: each tag keeps `least` of the rows that carry it)."""
    strata = np.asarray(strata)
    order = np.random.default_rng(seed).permutation(len(strata))
    members = ([strata[:, j] > 0 for j in range(strata.shape[1])] if strata.ndim == 2
               else [strata == value for value in np.unique(strata)])
    chosen = np.zeros(len(strata), dtype=bool)
    for member in members:
        chosen[order[member[order]][:least]] = True
    rest = order[~chosen[order]][:max(0, n - int(chosen.sum()))]
    chosen[rest] = True
    return np.flatnonzero(chosen)


def carve(rel_labels: list[tuple[str, int]], fractions: dict[str, float], seed: int,
           warn: list[str], classes: list[str]) -> dict[str, list[tuple[str, int]]]:
    """Split a pool per class: each wanted split gets round(n * fraction), at least 1."""
    rng = np.random.RandomState(seed)
    out = {s: [] for s in SPLITS}
    by_class: dict[int, list[str]] = {}
    for rel, label in rel_labels:
        by_class.setdefault(label, []).append(rel)
    for label in sorted(by_class):
        files = sorted(by_class[label], key=natural_key)
        order = rng.permutation(len(files))
        files = [files[i] for i in order]
        wanted = {s: f for s, f in fractions.items() if f > 0}
        need = len(wanted) + 1
        if len(files) < need:
            warn.append(f"class '{classes[label]}' has {len(files)} image(s), fewer than the {need} the split "
                        f"needs; all are kept in training")
            out["train"] += [(r, label) for r in files]
            continue
        sizes = {sp: max(1, int(math.floor(len(files) * f + 0.5))) for sp, f in wanted.items()}
        while sum(sizes.values()) >= len(files):  # always leave at least one image for training
            biggest = max(sizes, key=lambda sp: sizes[sp])
            sizes[biggest] -= 1
        start = 0
        for sp in ("test", "val"):
            n = sizes.get(sp, 0)
            out[sp] += [(r, label) for r in files[start:start + n]]
            start += n
        out["train"] += [(r, label) for r in files[start:]]
    for s in out:
        out[s].sort(key=lambda it: natural_key(it[0]))
    return out


def make_split(found: Found, val_split: float, test_split: float, seed: int) -> tuple[Split, list[str]]:
    """Keep the layout's given splits; carve missing val/test from train, stratified as the kind of label says
    (per class; per tag: data/tags.py; on a number's quantile bins: data/labels.py)."""
    return found.kind.split(found, val_split, test_split, seed)


def make_class_split(found: Found, val_split: float, test_split: float, seed: int) -> tuple[Split, list[str]]:
    """make_split for one class per image: each class carved on its own."""
    warn: list[str] = []
    given = {s: [(rel, lab) for rel, lab, sp in found.items if sp == s] for s in SPLITS}
    pool = [(rel, lab) for rel, lab, sp in found.items if sp in (None, "train")]
    fractions = {}
    if not given["test"]:
        fractions["test"] = test_split
    if not given["val"]:
        fractions["val"] = val_split
    carved = carve(pool, fractions, seed, warn, found.classes)
    items = {s: sorted(given[s] + carved[s], key=lambda it: natural_key(it[0])) if s != "train" else carved["train"]
             for s in SPLITS}
    return Split(root=found.root, classes=found.classes, items=items, kind=found.kind,
                 excluded=list(found.excluded)), warn


def splits_csv_text(split: Split) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    for s in SPLITS:
        for rel, label in split.items[s]:
            writer.writerow([rel, split.kind.cell(label, split.classes), s])
    for rel, label in split.excluded:
        writer.writerow([rel, label, EXCLUDED])
    return buf.getvalue()


def write_splits(split: Split, path: Path) -> None:
    write_text_atomic(path, splits_csv_text(split))  # --resume and evaluate read it back


def read_splits(path: Path, root: Path, classes: list[str], kind) -> Split:
    """Read a saved splits.csv back (used by --resume, evaluate and int8's calibration); kind: its kind of label."""
    items, excluded = {s: [] for s in SPLITS}, []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == EXCLUDED:
                excluded.append((row["path"], row["label"]))
                continue
            label = kind.parse(row["label"], classes, path)
            if row["split"] not in items:
                raise DataError(f"{path} names split '{row['split']}' (expected {', '.join(SPLITS)})")
            rel = PurePosixPath(row["path"])
            if rel.is_absolute() or PureWindowsPath(row["path"]).is_absolute() or ".." in rel.parts:
                # a run folder is data too: its paths must stay inside the data folder they describe
                raise DataError(f"{path} names '{row['path']}', outside the data folder: refused")
            items[row["split"]].append((row["path"], label))
    return Split(root=root, classes=classes, items=items, kind=kind, excluded=excluded)


def folds(split: Split, k: int, seed: int) -> list[Split]:
    """Stratified K-fold cross-validation inside the training split (scikit-learn's StratifiedKFold): fold i
    validates on its part and trains on the other K-1; the K validation parts partition the training split.
    The test split is the same in every fold and never used. The kind of label says what is stratified on (several
    tags per image: iterstrat's MultilabelStratifiedKFold, per tag; numbers: their quantile bins)."""
    rows = split.items["train"]
    counts = split.counts()["train"]
    if k < 2:
        raise UserError("--cv needs at least 2 folds")
    short = [c for c, n in zip(split.classes, counts) if n < k]
    if short:
        raise DataError(f"--cv {k} needs at least {k} training images of every class; "
                        f"{', '.join(short[:5])} {'has' if len(short) == 1 else 'have'} fewer")
    labels = split.kind.strata([label for _, label in rows])
    out = []
    for train_idx, val_idx in split.kind.kfold(k, seed).split(np.zeros((len(rows), 1)), labels):
        items = {"train": [rows[i] for i in train_idx], "val": [rows[i] for i in sorted(val_idx)],
                 "test": list(split.items["test"])}
        out.append(Split(root=split.root, classes=split.classes, items=items, kind=split.kind))
    return out
