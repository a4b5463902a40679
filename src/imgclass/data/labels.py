"""The kinds of label a task reads (as fastai's blocks: CategoryBlock, MultiCategoryBlock, RegressionBlock): how a
DATA folder's labels are found, split, written to splits.csv and read back, relabelled, and held as a tensor. A
task (models/task.py) names its kind; the data layer asks the kind and never which task it serves.

  CLASSES   one class per image (also the fine classes of two-level labels)   label: the class index (int)
  TAGS      several tags per image (data/tags.py)                              label: a 0/1 tuple over the tags
  NUMBERS   a number per image (a CSV column of numbers)                       label: the number (float)

Found.items hold (relative path, the label as found, split or None): a class index, the tuple of tag indices, or the
number; Split.items hold (relative path, label) as above.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelSource:
    """Where a DATA folder's labels are: its folders, or a labels CSV and which of its columns (train's --labels,
    --id-column, --label-column; --tag-columns for tags; --hierarchy, --label-columns for two-level classes)."""
    data: str | Path
    labels: str | Path | None = None
    id_column: str | None = None
    label_column: str | None = None
    tag_columns: str | None = None
    hierarchy: bool = False
    label_columns: str | None = None


class LabelKind:
    """One kind of label. Subclasses say how it is read and split; what they share is written here once."""
    name: ClassVar[str]
    copies_hint: ClassVar[str | None] = None  # check's note on identical copies under different labels, if any

    def find(self, source: LabelSource):
        """The images of source.data with their labels (a data.find.Found)."""
        raise NotImplementedError

    def split(self, found, val_split: float, test_split: float, seed: int):
        """(data.split.Split, notes): the layout's given splits kept, the missing ones carved, stratified."""
        raise NotImplementedError

    def held(self, found_label: Any, n_classes: int) -> Any:
        """A label as Found.items hold it, as Split.items hold it (tags: the indices become a 0/1 tuple)."""
        return found_label

    def cell(self, label: Any, classes: list[str]) -> str:
        """A label as splits.csv (and an --exclude record) writes it."""
        return classes[label]

    def parse(self, cell: str, classes: list[str], where: Path) -> Any:
        """A splits.csv cell back into a label of these classes."""
        if cell not in classes:
            raise DataError(f"{where} names class '{cell}' unknown to the model")
        return classes.index(cell)

    def counted(self, label: Any) -> list[int]:
        """The classes (tags; the one output) a label counts towards in Split.counts."""
        return [label]

    def relabel(self, text: str, classes: list[str], where: str | Path) -> Any:
        """--relabel's corrected label, as this kind holds it."""
        if text not in classes:
            raise DataError(f"{where} names label '{text}', not a class of the data ({', '.join(classes[:8])}"
                            f"{', ...' if len(classes) > 8 else ''})")
        return classes.index(text)

    def to_model(self, found, classes: list[str]):
        """f(a label of found) -> the label in a model's classes, for evaluating a model on another folder; a
        DataError when the folder names classes the model does not know."""
        index = _model_index(found, classes)
        return lambda label: index[found.classes[label]]

    def strata(self, labels: list[Any]) -> np.ndarray:
        """What K-fold cross-validation stratifies on (data.split.folds)."""
        return np.asarray(labels)

    def kfold(self, k: int, seed: int):
        """The K-fold splitter stratified on `strata` (scikit-learn's StratifiedKFold)."""
        from sklearn.model_selection import StratifiedKFold  # deferred: scikit-learn only for --cv
        return StratifiedKFold(k, shuffle=True, random_state=seed)

    def statistics(self, by_split: dict[str, list[tuple[str, Any]]], classes: list[str]) -> dict | None:
        """What check reports of these labels beyond the counts per class (None: nothing)."""
        return None

    def kept(self, label: Any, keep: list[int]) -> Any:
        """A label once only the classes `keep` (old indices, in order) remain: None when its image leaves the run
        (one class per image: its class left)."""
        return keep.index(label) if label in keep else None


class ClassLabels(LabelKind):
    """One class per image (two-level labels too: their fine classes, with Found.parents)."""
    name = "classes"
    copies_hint = ("have identical copies in different class folders: if an image carries several tags, check and "
                   "train with --multi-label (its copies are then one image with those tags)")

    def find(self, source: LabelSource):
        from .find import find_images
        if source.tag_columns:
            raise DataError("--tag-columns is for several tags per image (--multi-label); this data has one class "
                            "per image")
        found = find_images(source.data, source.labels, source.id_column, source.label_column, source.hierarchy,
                            source.label_columns)
        found.kind = self
        return found

    def split(self, found, val_split, test_split, seed):
        from .split import make_class_split
        return make_class_split(found, val_split, test_split, seed)


class TagLabels(LabelKind):
    """Several tags per image: Found.items hold the tag indices, Split.items a 0/1 tuple over the tags."""
    name = "tags"

    def find(self, source: LabelSource):
        from .tags import read_tags, refuse_two_levels
        refuse_two_levels(source.hierarchy, source.label_columns)
        found = read_tags(source.data, source.labels, source.id_column, source.label_column, source.tag_columns)
        found.kind = self
        return found

    def split(self, found, val_split, test_split, seed):
        from .split import Split
        from .tags import multilabel_split
        by_split, notes = multilabel_split(found, val_split, test_split, seed)
        items = {s: [(rel, self.held(tags, len(found.classes))) for rel, tags in by_split[s]] for s in SPLITS}
        return Split(root=found.root, classes=found.classes, items=items, kind=self,
                     excluded=list(found.excluded)), notes

    def held(self, found_label, n_classes):
        return tuple(int(i in found_label) for i in range(n_classes))

    def kept(self, label, keep):
        """The image stays, with its other tags (none left: an untagged image, which teaches 'none of these')."""
        return tuple(label[i] for i in keep)

    def cell(self, label, classes):
        """A JSON list of the tag names (any tag name survives it; byte-stable)."""
        return json.dumps([classes[t] for t in self.counted(label)], ensure_ascii=False)

    def parse(self, cell, classes, where):
        from ..core.rundir import tags_of_cell
        names = tags_of_cell(cell)
        if names is None:
            raise DataError(f"{where}: '{cell[:60]}' is not a list of tags")
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DataError(f"{where} names class '{unknown[0]}' unknown to the model")
        return tuple(int(c in names) for c in classes)

    def counted(self, label):
        return [i for i, on in enumerate(label) if on]

    def relabel(self, text, classes, where):
        """A JSON list of tag names (as splits.csv and the workbench's review write them): the image's tags become
        these, held as read_tags holds them (the tags' indices)."""
        held = self.parse(text, classes, Path(str(where)))
        return tuple(i for i, on in enumerate(held) if on)

    def to_model(self, found, classes):
        index = _model_index(found, classes)
        return lambda label: tuple(int(i in {index[found.classes[t]] for t in label}) for i in range(len(classes)))

    def strata(self, labels):
        return np.array(labels)

    def kfold(self, k, seed):
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # stratified per tag
        return MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)

    def statistics(self, by_split, classes):
        """data/tags.py's tag statistics: tags per image, untagged images, frequent pairs, rare tags."""
        from .tags import tag_statistics
        return tag_statistics({s: [(rel, tuple(self.counted(label))) for rel, label in rows]
                               for s, rows in by_split.items()}, classes)


# Quantile bins a number's split is stratified on: each bin is carved like a class, so every split covers the range.
# At most NUMBER_BINS, and at least MIN_PER_BIN images each (a bin must reach every split).
NUMBER_BINS = 10
MIN_PER_BIN = 10


class NumberLabels(LabelKind):
    """A number per image, from a labels CSV's column (--label-column); classes: that column's name (the one
    output). A split column in the CSV is honoured (frames of one camera must be split by time, not at random)."""
    name = "numbers"

    def find(self, source: LabelSource):
        from .find import (ID_COLUMNS, LABEL_COLUMNS, Found, _pick_column, csv_split_column, natural_key,
                           read_labels_csv, resolve_ids, split_of_cell)
        if source.labels is None:
            raise DataError("a number per image is read from a labels CSV: give --labels CSV (and --label-column "
                            "naming the numbers' column)")
        if source.tag_columns or source.hierarchy or source.label_columns:
            raise DataError("--regression reads one column of numbers: --tag-columns, --hierarchy and "
                            "--label-columns are for class labels")
        root, csv_path = Path(source.data).expanduser(), Path(source.labels).expanduser()
        if not root.is_dir():
            raise DataError(f"data path is not a folder: {root}")
        header, rows = read_labels_csv(csv_path)
        id_col = _pick_column(header, source.id_column, ID_COLUMNS, "id", csv_path, 0)
        col = _pick_column(header, source.label_column, LABEL_COLUMNS, "label", csv_path, 1)
        split_col = csv_split_column(header)
        values, skipped = [], 0
        for i, r in enumerate(rows):
            ident, cell = str(r.get(id_col) or "").strip(), str(r.get(col) or "").strip()
            if not ident or not cell:
                skipped += 1
                continue
            try:
                value = float(cell)
            except ValueError:
                raise DataError(f"{csv_path.name}, row {i + 2}: '{cell[:40]}' in column '{col}' is not a number "
                                f"(--regression reads numbers)") from None
            if not math.isfinite(value):
                raise DataError(f"{csv_path.name}, row {i + 2}: column '{col}' holds {cell}; a label must be finite")
            values.append((ident, value, split_of_cell(r.get(split_col), csv_path, i) if split_col else None))
        paths, missing = resolve_ids(root, csv_path, [ident for ident, _, _ in values])
        items, seen = [], set()
        for ident, value, split in values:
            rel = paths.get(ident)
            if rel is not None and rel not in seen:
                seen.add(rel)
                items.append((rel, value, split))
        if not items:
            raise DataError(f"none of the {len(values)} ids in {csv_path.name} (column '{id_col}') match an image "
                            f"file in {root}; ids resolve by file name without extension")
        train = [v for _, v, s in items if s in (None, "train")]
        if len(train) < 2 or min(train) == max(train):
            raise DataError(f"need at least 2 training images with different numbers in {csv_path.name} "
                            f"(column '{col}')")
        notes = [f"{len(missing)} ids in {csv_path.name} match no image and are skipped (e.g. "
                 f"{', '.join(missing[:3])})"] if missing else []
        if skipped:
            notes.append(f"{skipped} row(s) of {csv_path.name} without an id or a number are skipped")
        items.sort(key=lambda it: natural_key(it[0]))
        return Found(root=root, classes=[col], items=items, kind=self, notes=notes,
                     layout=f"labels CSV {csv_path.name} (a number per image: column '{col}'"
                            + (", split column" if split_col else "") + ")")

    def split(self, found, val_split, test_split, seed):
        """Stratified on quantile bins of the number, each bin carved like a class (data.split.carve)."""
        from .split import Split, carve
        from .find import natural_key
        given = {s: [(rel, v) for rel, v, sp in found.items if sp == s] for s in SPLITS}
        pool = [(rel, v) for rel, v, sp in found.items if sp in (None, "train")]
        fractions = {name: share for name, share in (("test", test_split), ("val", val_split)) if not given[name]}
        bins = self.bins([v for _, v in pool])
        value = dict(pool)
        warn: list[str] = []
        carved = carve([(rel, int(b)) for (rel, _), b in zip(pool, bins)], fractions, seed, warn,
                       [f"quantile bin {b + 1}" for b in range(int(bins.max()) + 1 if len(bins) else 0)])
        # (the pool holds the given training images: train is what carving left of it)
        items = {s: sorted((given[s] if s != "train" else []) + [(rel, value[rel]) for rel, _ in carved[s]],
                           key=lambda it: natural_key(it[0])) for s in SPLITS}
        return Split(root=found.root, classes=found.classes, items=items, kind=self,
                     excluded=list(found.excluded)), warn

    @staticmethod
    def bins(values: list[float]) -> np.ndarray:
        """Each value's quantile bin (0 .. bins-1): NUMBER_BINS at most, MIN_PER_BIN values each at least."""
        n = len(values)
        count = max(1, min(NUMBER_BINS, n // MIN_PER_BIN))
        if count == 1:
            return np.zeros(n, dtype=int)
        edges = np.quantile(np.asarray(values, dtype=float), np.linspace(0, 1, count + 1)[1:-1])
        return np.searchsorted(edges, np.asarray(values, dtype=float), side="right")

    def cell(self, label, classes):
        return repr(float(label))  # the shortest text that reads back as the same float

    def parse(self, cell, classes, where):
        try:
            value = float(cell)
        except ValueError:
            raise DataError(f"{where}: '{cell[:40]}' is not a number") from None
        if not math.isfinite(value):
            raise DataError(f"{where}: '{cell[:40]}' is not a finite number")
        return value

    def counted(self, label):
        return [0]

    def relabel(self, text, classes, where):
        return self.parse(text, classes, Path(str(where)))

    def to_model(self, found, classes):
        return float

    def strata(self, labels):
        return self.bins(labels)


def _model_index(found, classes: list[str]) -> dict[str, int]:
    """{class name: its index in a model's classes}; a DataError when found names classes the model does not know."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in found.classes if c not in index]
    if unknown:
        raise DataError(f"classes {', '.join(unknown[:5])} in {found.root} are unknown to the model "
                        f"(it knows {', '.join(classes[:10])}{'...' if len(classes) > 10 else ''})")
    return index


CLASSES, TAGS, NUMBERS = ClassLabels(), TagLabels(), NumberLabels()


def kind_of_options(multi_label: bool = False, tag_columns: str | None = None, regression: bool = False) -> LabelKind:
    """The kind of label train's (and check's) options ask for: --multi-label or --tag-columns tags, --regression
    numbers, else classes."""
    if regression and (multi_label or tag_columns):
        raise DataError("--regression (a number per image) and --multi-label/--tag-columns (tags) exclude each other")
    return NUMBERS if regression else TAGS if (multi_label or tag_columns) else CLASSES

