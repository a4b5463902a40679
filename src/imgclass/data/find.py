"""Find labelled images in a folder, in any of the three layouts a user brings.

1. ``DATA/<class>/*``                                   -> every image is in the pool to split
2. ``DATA/{train,val|valid|validation,test}/<class>/*``  -> given splits are kept
3. ``DATA`` + ``--labels labels.csv`` (id,label)         -> ids resolve to image files by stem
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
ID_COLUMNS = ("id", "image_id", "file", "filename", "file_name", "file_path", "filepath", "image", "path", "img")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "target", "category", "y")


def natural_key(text: str) -> list:
    """Sort key that puts "2" before "10" and "img2" before "img10" (case-insensitive, then exact)."""
    parts = re.split(r"(\d+)", text)
    return [(0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts] + [text]


def natural_sorted(items):
    return sorted(items, key=natural_key)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """All image files under folder (recursive), in natural order of their relative paths."""
    files = [p for p in folder.rglob("*") if is_image_file(p)]
    return sorted(files, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


@dataclass
class Found:
    """Images found in DATA: relative paths, class names, and any split fixed by the layout."""
    root: Path
    classes: list[str]
    items: list[tuple[str, int, str | None]] = field(default_factory=list)  # (relpath, label index, split or None)
    layout: str = ""
    notes: list[str] = field(default_factory=list)
    coarse_classes: list[str] | None = None   # two-level labels: the coarse classes (natural order)
    parents: list[int] | None = None          # for each fine class (classes), the index of its coarse class
    kind: Any = None                          # the kind of label items hold (data/labels.py sets it)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (path, label) left out by --exclude (data/edits.py)


def _class_dirs(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]


def find_images(data: str | Path, labels_csv: str | Path | None = None,
                id_column: str | None = None, label_column: str | None = None,
                hierarchy: bool = False, label_columns: str | None = None) -> Found:
    """hierarchy: DATA/<coarse>/<fine>/* (below any split folders); label_columns "coarse,fine": a CSV
    with one column per level. Either gives two-level labels: fine classes plus their parents."""
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"data path does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")
    if label_columns and labels_csv is None:
        raise DataError("--label-columns needs --labels CSV")
    if labels_csv is not None:
        if label_columns:
            found = _from_csv_levels(root, Path(labels_csv).expanduser(), id_column, label_columns)
        else:
            found = _from_csv(root, Path(labels_csv).expanduser(), id_column, label_column)
    else:
        split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in _class_dirs(root) if d.name.lower() in SPLIT_NAMES}
        if "train" in split_dirs:
            found = _from_split_folders(root, split_dirs, hierarchy)
        elif hierarchy:
            found = _from_nested_folders(root, {None: root})
        else:
            found = _from_class_folders(root)
    _check_usable(found)
    return found


def _with_parents(found: Found, pairs: dict[str, set[str]], source: str) -> Found:
    """Attach coarse classes; a fine class under two parents is an error that names it."""
    twice = sorted(f for f, ps in pairs.items() if len(ps) > 1)
    if twice:
        f = twice[0]
        raise DataError(f"fine class '{f}' appears under several coarse classes ({', '.join(sorted(pairs[f]))}) "
                        f"in {source}; fine class names must be unique across parents")
    coarse = natural_sorted({next(iter(ps)) for ps in pairs.values()})
    cindex = {c: i for i, c in enumerate(coarse)}
    found.coarse_classes = coarse
    found.parents = [cindex[next(iter(pairs[f]))] for f in found.classes]
    return found


def _from_nested_folders(root: Path, split_folders: dict[str | None, Path]) -> Found:
    pairs: dict[str, set[str]] = {}
    files: list[tuple[str, str, str | None]] = []
    for split, folder in split_folders.items():
        for cdir in _class_dirs(folder):
            for fdir in _class_dirs(cdir):
                pairs.setdefault(fdir.name, set()).add(cdir.name)
                files += [(p.relative_to(root).as_posix(), fdir.name, split) for p in list_images(fdir)]
            if any(is_image_file(p) for p in cdir.iterdir()):
                raise DataError(f"--hierarchy expects DATA/<coarse>/<fine>/images, but {cdir} holds images directly")
    classes = natural_sorted(pairs)
    index = {c: i for i, c in enumerate(classes)}
    items = sorted(((rel, index[f], s) for rel, f, s in files), key=lambda it: natural_key(it[0]))
    found = Found(root=root, classes=classes, items=items, layout="nested folders <coarse>/<fine>")
    return _with_parents(found, pairs, str(root))


def _from_csv_levels(root: Path, csv_path: Path, id_column: str | None, label_columns: str) -> Found:
    cols = [c.strip() for c in label_columns.split(",") if c.strip()]
    if len(cols) != 2:
        raise DataError(f"--label-columns takes two columns, coarse then fine (e.g. phylum,family), not '{label_columns}'")
    if not csv_path.is_file():
        raise DataError(f"labels CSV not found: {csv_path}")
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for c in cols:
            if c not in header:
                raise DataError(f"{csv_path.name} has no column '{c}' (columns: {', '.join(header)})")
        id_col = _pick_column(header, id_column, ID_COLUMNS, "id", csv_path, 0)
        split_col = csv_split_column(header)
        rows = [(str(r[id_col]).strip(), str(r[cols[0]]).strip(), str(r[cols[1]]).strip(),
                 split_of_cell(r.get(split_col), csv_path, i) if split_col else None) for i, r in enumerate(reader)
                if r.get(id_col) and r.get(cols[0]) and r.get(cols[1])]
    pairs: dict[str, set[str]] = {}
    for _, coarse, fine, _ in rows:
        pairs.setdefault(fine, set()).add(coarse)
    found = _resolve_csv_rows(root, csv_path, id_col, [(i, fine, split) for i, _, fine, split in rows])
    found.layout = f"labels CSV {csv_path.name} ({cols[0]} -> {cols[1]})" + (" (split column)" if split_col else "")
    return _with_parents(found, {f: pairs[f] for f in found.classes}, csv_path.name)


def _from_class_folders(root: Path, split: str | None = None, folder: Path | None = None,
                        classes: list[str] | None = None) -> Found:
    folder = folder or root
    names = natural_sorted(d.name for d in _class_dirs(folder))
    classes = classes if classes is not None else names
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for name in names:
        for path in list_images(folder / name):
            items.append((path.relative_to(root).as_posix(), index[name], split))
    return Found(root=root, classes=classes, items=items, layout="class folders")


def _from_split_folders(root: Path, split_dirs: dict[str, Path], hierarchy: bool = False) -> Found:
    notes = []
    labelled = {}
    for split, folder in split_dirs.items():
        if _class_dirs(folder):
            labelled[split] = folder
        elif list_images(folder):
            # A Kaggle test folder holds unlabelled images: not usable for evaluation.
            notes.append(f"'{folder.name}/' holds images without class folders; it is not used "
                         f"for training or evaluation (use `imgclass submit` on it)")
    names = set()
    for folder in labelled.values():
        names.update(d.name for d in _class_dirs(folder))
    classes = natural_sorted(names)
    # a class found in val/ or test/ but not in train/ is kept here (check counts it); training leaves it out of the
    # model with a note (data/split.py: leave_out_untrained), as it does a tag with no training image
    given = [s for s in ("val", "test") if s in labelled]
    layout = "split folders (" + ", ".join(["train"] + given) + ")"
    if hierarchy:
        found = _from_nested_folders(root, labelled)
        found.layout, found.notes = layout + ", nested <coarse>/<fine>", notes
        return found
    items = []
    for split in ("train", "val", "test"):
        if split in labelled:
            items += _from_class_folders(root, split, labelled[split], classes).items
    return Found(root=root, classes=classes, items=items, layout=layout, notes=notes)


def read_labels_csv(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a labels CSV (a byte-order mark tolerated); refused when missing or empty."""
    if not csv_path.is_file():
        raise DataError(f"labels CSV not found: {csv_path}")
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    if not header or not rows:
        raise DataError(f"labels CSV is empty: {csv_path}")
    return header, rows


def csv_split_column(header: list[str]) -> str | None:
    """A labels CSV's split column (train/val/test per row), honoured by every kind of label; None if it has none."""
    return next((h for h in header if h.lower().strip() == "split"), None)


def split_of_cell(value: str | None, csv_path: Path, i: int) -> str | None:
    """Row i's split from the CSV's split column (empty: none given)."""
    value = (value or "").strip().lower()
    if not value:
        return None
    if value not in SPLIT_NAMES:
        raise DataError(f"{csv_path.name}, row {i + 2}: split '{value}' is not train, val or test")
    return SPLIT_NAMES[value]


def _pick_column(header: list[str], wanted: str | None, candidates: tuple[str, ...], what: str,
                 csv_path: Path, position: int) -> str:
    if wanted is not None:
        if wanted not in header:
            raise DataError(f"{csv_path.name} has no column '{wanted}' (columns: {', '.join(header)})")
        return wanted
    lower = {h.lower().strip(): h for h in header}
    for c in candidates:
        if c in lower:
            return lower[c]
    if len(header) == 2:
        return header[position]
    raise DataError(f"cannot tell which column of {csv_path.name} is the {what} "
                    f"(columns: {', '.join(header)}); name it with --{what}-column")


def _from_csv(root: Path, csv_path: Path, id_column: str | None, label_column: str | None) -> Found:
    if not csv_path.is_file():
        raise DataError(f"labels CSV not found: {csv_path}")
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if not header:
            raise DataError(f"labels CSV is empty: {csv_path}")
        id_col = _pick_column(header, id_column, ID_COLUMNS, "id", csv_path, 0)
        label_col = _pick_column(header, label_column, LABEL_COLUMNS, "label", csv_path, 1)
        split_col = csv_split_column(header)
        rows = [(str(r[id_col]).strip(), str(r[label_col]).strip(),
                 split_of_cell(r.get(split_col), csv_path, i) if split_col else None) for i, r in enumerate(reader)
                if r.get(id_col) not in (None, "") and r.get(label_col) not in (None, "")]
    if not rows:
        raise DataError(f"labels CSV has no rows with both '{id_col}' and '{label_col}': {csv_path}")
    found = _resolve_csv_rows(root, csv_path, id_col, rows)
    if split_col:
        found.layout += " (split column)"
    return found


def resolve_ids(root: Path, csv_path: Path, ids: list[str]) -> tuple[dict[str, str], list[str]]:
    """({id: relative path}, the ids matching no image). An id is an exact relative path, else a file stem
    (any image extension); an id matching several files is an error that names them."""
    images = list_images(root)
    by_rel = {p.relative_to(root).as_posix(): p for p in images}
    by_stem: dict[str, list[Path]] = {}
    for p in images:
        by_stem.setdefault(p.stem, []).append(p)
    found, missing = {}, []
    for ident in ids:
        path = by_rel.get(ident) or by_rel.get(ident.lstrip("./"))
        if path is None:
            candidates = by_stem.get(Path(ident).stem if Path(ident).suffix.lower() in IMAGE_EXTENSIONS else ident, [])
            if len(candidates) > 1:
                raise DataError(f"id '{ident}' in {csv_path.name} matches several files: "
                                + ", ".join(p.relative_to(root).as_posix() for p in candidates[:3]))
            path = candidates[0] if candidates else None
        if path is None:
            missing.append(ident)
        else:
            found[ident] = path.relative_to(root).as_posix()
    return found, missing


def _resolve_csv_rows(root: Path, csv_path: Path, id_col: str, rows: list[tuple[str, str, str | None]]) -> Found:
    """(id, class, split or None) rows of a labels CSV as the images they name."""
    paths, missing = resolve_ids(root, csv_path, [ident for ident, _, _ in rows])
    classes = natural_sorted({label for _, label, _ in rows})
    index = {c: i for i, c in enumerate(classes)}
    items, seen = [], set()
    for ident, label, split in rows:
        rel = paths.get(ident)
        if rel is None or rel in seen:
            continue
        seen.add(rel)
        items.append((rel, index[label], split))
    if not items:
        raise DataError(f"none of the {len(rows)} ids in {csv_path.name} (column '{id_col}') match an image "
                        f"file in {root} (e.g. '{rows[0][0]}'); ids resolve by file name without extension")
    notes = []
    if missing:
        notes.append(f"{len(missing)} ids in {csv_path.name} match no image and are skipped "
                     f"(e.g. {', '.join(missing[:3])})")
    items.sort(key=lambda it: natural_key(it[0]))
    used = sorted({lab for _, lab, _ in items})
    if len(used) < len(classes):
        kept = [classes[i] for i in used]
        remap = {old: new for new, old in enumerate(used)}
        items = [(rel, remap[lab], s) for rel, lab, s in items]
        notes.append(f"classes with no matched image dropped: {', '.join(sorted(set(classes) - set(kept)))}")
        classes = kept
    return Found(root=root, classes=classes, items=items, layout=f"labels CSV {csv_path.name}", notes=notes)


def _check_usable(found: Found) -> None:
    if not found.items:
        raise DataError(f"no images found in {found.root} (expected DATA/<class>/*.jpg, "
                        f"DATA/train/<class>/*.jpg, or --labels CSV)")
    counts = [0] * len(found.classes)
    for _, label, split in found.items:
        if split in (None, "train"):
            counts[label] += 1
    present = [c for c, n in zip(found.classes, counts) if n]
    if len(present) < 2:
        only = f" (only '{present[0]}')" if present else ""
        raise DataError(f"need at least 2 classes with training images in {found.root}{only}")
