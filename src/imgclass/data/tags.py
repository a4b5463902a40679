"""Several tags per image (multi-label): where the tags come from, how they are split, what they look like.

Layouts (`--multi-label`):
1. ``DATA`` + ``--labels tags.csv`` with one column holding each image's tags as a list: ``A;B;C``, ``A|B``,
   ``A, B``, ``A B``, or a list literal such as ``['Action', 'Drama']`` (the form is detected from the whole
   column and said); a cell may be empty: an image with no tag teaches "none of these".
2. ``DATA`` + ``--labels tags.csv --tag-columns Action,Drama`` (or a range ``Action:Western`` in the CSV's
   column order): one 0/1 column per tag, the Kaggle layout; a named column holding words instead (an
   attribute such as colour or season) gives its value as the image's tag.
   Either CSV may have a ``split`` column (train/val/test), which is honoured.
3. ``DATA/<tag>/*`` (also below train/val/test folders): an image whose identical copy (same SHA-256) sits
   in several tag folders is one image with all those tags.

Found.items then hold (relative path, tuple of tag indices, split or None), and data/labels.py's TAGS reads them.
`multilabel_split` splits them stratified per tag (iterative stratification, Sechidis et al. 2011, from the
maintained `iterative-stratification` package rather than written here); `tag_statistics` is what `check`
reports of them.
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from .find import (ID_COLUMNS, LABEL_COLUMNS, SPLIT_NAMES, Found, _class_dirs, _pick_column, csv_split_column,
                   list_images, natural_key, natural_sorted, read_labels_csv, resolve_ids, split_of_cell)

LIST_SEPARATORS = (";", "|", ",")  # tried in this order; spaces only when none of them occurs in the column
TAG_COLUMN_NAMES = ("tags", "tag", "labels", "label", "genres", "genre", "categories", "attributes")
MAX_CELL = 10_000                   # characters a list cell may hold (a list literal is parsed, never run)
TRUE, FALSE = {"1", "1.0", "true", "yes"}, {"0", "0.0", "false", "no", ""}


def read_tags(data: str | Path, labels_csv: str | Path | None = None, id_column: str | None = None,
              tag_column: str | None = None, tag_columns: str | None = None) -> Found:
    """The images of DATA with their tags, from a CSV (a list column, or 0/1 columns) or from copies of an
    image in several class folders."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")
    if tag_columns and labels_csv is None:
        raise DataError("--tag-columns needs --labels CSV")
    found = _from_folder_copies(root) if labels_csv is None else \
        _from_csv(root, Path(labels_csv).expanduser(), id_column, tag_column, tag_columns)
    if not found.items:
        raise DataError(f"no tagged images found in {root}")
    used = Counter(t for _, tags, split in found.items if split in (None, "train") for t in tags)
    if len(used) < 2:
        raise DataError(f"need at least 2 tags on training images in {root} (found {len(used)})")
    return found


def refuse_two_levels(hierarchy: bool, label_columns: str | None) -> None:
    """Several tags per image and two-level labels are two label structures: a run has one."""
    if hierarchy or label_columns:
        raise DataError("--multi-label and two-level labels (--hierarchy, --label-columns) exclude each other")


def parse_tag_lists(cells: list[str], where: str) -> tuple[list[list[str]], str]:
    """Each cell's tags, and how they were read (said to the user): list literals, or names separated by the
    first of ; | , found in the column, else by spaces."""
    filled = [c.strip() for c in cells if c.strip()]
    if filled and all(c.startswith("[") and c.endswith("]") for c in filled):
        return [_literal_list(c, where, i) for i, c in enumerate(c.strip() for c in cells)], "a list in each cell"
    sep = next((s for s in LIST_SEPARATORS if any(s in c for c in filled)), None)
    name = {";": "';'", "|": "'|'", ",": "','", None: "spaces"}[sep]
    lists = [[t.strip() for t in (c.split(sep) if sep else c.split()) if t.strip()] for c in cells]
    return [list(dict.fromkeys(tags)) for tags in lists], f"tags separated by {name}"


def _literal_list(cell: str, where: str, row: int) -> list[str]:
    if len(cell) > MAX_CELL:
        raise DataError(f"{where}, row {row + 2}: a tag list of {len(cell)} characters is too long")
    if not cell:
        return []
    try:
        value = json.loads(cell)
    except ValueError:
        try:
            value = ast.literal_eval(cell)  # Python's list form ['a', 'b']: literals only, no code runs
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = None
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        raise DataError(f"{where}, row {row + 2}: '{cell[:60]}' is not a list of tag names")
    return list(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))


def _from_csv(root: Path, csv_path: Path, id_column: str | None, tag_column: str | None,
              tag_columns: str | None) -> Found:
    header, rows = read_labels_csv(csv_path)
    id_col = _pick_column(header, id_column, ID_COLUMNS, "id", csv_path, 0)
    split_col = csv_split_column(header)
    if tag_columns:
        columns = _tag_column_names(header, tag_columns, csv_path)
        lists, form = _from_tag_columns(rows, columns, csv_path)
    else:
        col = tag_column or next((h for h in header if h.lower().strip() in TAG_COLUMN_NAMES), None)
        col = _pick_column(header, col, LABEL_COLUMNS, "tag", csv_path, 1)
        lists, form = parse_tag_lists([r.get(col) or "" for r in rows], csv_path.name)
        form += f" in column '{col}'"
    splits = [split_of_cell(r.get(split_col), csv_path, i) if split_col else None for i, r in enumerate(rows)]
    ids = [str(r.get(id_col) or "").strip() for r in rows]
    paths, missing = resolve_ids(root, csv_path, [i for i in ids if i])
    if not paths:
        raise DataError(f"none of the {len(ids)} ids in {csv_path.name} (column '{id_col}') match an image file in "
                        f"{root} (e.g. '{ids[0]}'); ids resolve by file name without extension")
    tags = natural_sorted({t for tl in lists for t in tl})
    index = {t: i for i, t in enumerate(tags)}
    items, seen = [], set()
    for ident, tl, split in zip(ids, lists, splits):
        rel = paths.get(ident)
        if rel is None or rel in seen:
            continue
        seen.add(rel)
        items.append((rel, tuple(sorted(index[t] for t in tl)), split))
    items.sort(key=lambda it: natural_key(it[0]))
    notes = [f"multi-label: tags read from {csv_path.name} as {form}"]
    if missing:
        notes.append(f"{len(missing)} ids in {csv_path.name} match no image and are skipped "
                     f"(e.g. {', '.join(missing[:3])})")
    return _drop_unused(Found(root=root, classes=tags, items=items, layout=f"tags CSV {csv_path.name}",
                              notes=notes))


def _tag_column_names(header: list[str], spec: str, csv_path: Path) -> list[str]:
    """--tag-columns A,B,C or A:C (every column from A to C in the CSV's order)."""
    if ":" in spec and "," not in spec:
        first, _, last = (s.strip() for s in spec.partition(":"))
        for name in (first, last):
            if name not in header:
                raise DataError(f"{csv_path.name} has no column '{name}' (columns: {', '.join(header)})")
        a, b = header.index(first), header.index(last)
        if a > b:
            raise DataError(f"--tag-columns {spec}: '{first}' comes after '{last}' in {csv_path.name}")
        return header[a:b + 1]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    absent = [n for n in names if n not in header]
    if absent:
        raise DataError(f"{csv_path.name} has no column '{absent[0]}' (columns: {', '.join(header)})")
    if len(names) < 2:
        raise DataError("--tag-columns names at least two columns (A,B,... or a range A:D)")
    return names


def _from_tag_columns(rows: list[dict], columns: list[str], csv_path: Path) -> tuple[list[list[str]], str]:
    """Each row's tags from the named columns: a column of numbers is a 0/1 indicator of the tag it is named
    after; a column of words gives its value as a tag (an attribute: colour, season, ...)."""
    def cell(r: dict, c: str) -> str:
        return str(r.get(c) or "").strip()
    def is_number(v: str) -> bool:
        try:
            float(v)
        except ValueError:
            return False
        return True
    worded = {c for c in columns if any(cell(r, c) and not is_number(cell(r, c)) and cell(r, c).lower() not in TRUE | FALSE
                                        for r in rows)}
    lists = []
    for i, r in enumerate(rows):
        tags = []
        for c in columns:
            value = cell(r, c)
            if c in worded:
                tags += [value] if value else []
            elif value.lower() in TRUE:
                tags.append(c)
            elif value.lower() not in FALSE:
                raise DataError(f"{csv_path.name}, row {i + 2}, column '{c}': '{value}' is not 0 or 1")
        lists.append(list(dict.fromkeys(tags)))
    parts = ([f"{len(columns) - len(worded)} 0/1 column(s), one per tag"] if len(worded) < len(columns) else []) + \
            ([f"the values of {len(worded)} attribute column(s)"] if worded else [])
    return lists, " and ".join(parts)


def _from_folder_copies(root: Path) -> Found:
    """DATA[/<split>]/<tag>/*: identical files (SHA-256) in several tag folders are one image with those tags."""
    split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in _class_dirs(root) if d.name.lower() in SPLIT_NAMES}
    folders = split_dirs if "train" in split_dirs else {None: root}
    by_digest: dict[str, list[tuple[str, str, str | None]]] = {}
    for split, folder in folders.items():
        for tag_dir in _class_dirs(folder):
            for path in list_images(tag_dir):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                by_digest.setdefault(digest, []).append((path.relative_to(root).as_posix(), tag_dir.name, split))
    tags = natural_sorted({tag for copies in by_digest.values() for _, tag, _ in copies})
    index = {t: i for i, t in enumerate(tags)}
    items, notes, across = [], [], 0
    for copies in by_digest.values():
        copies.sort(key=lambda c: natural_key(c[0]))
        rel, _, split = copies[0]
        across += len({s for _, _, s in copies}) > 1
        items.append((rel, tuple(sorted({index[tag] for _, tag, _ in copies})), split))
    items.sort(key=lambda it: natural_key(it[0]))
    several = sum(len(t) > 1 for _, t, _ in items)
    notes.append(f"multi-label: {several} of {len(items)} images have copies in several tag folders and are read "
                 f"as one image with those tags")
    if across:
        notes.append(f"{across} image(s) have copies in different split folders: each is kept in the split of its "
                     f"first copy (the others would leak)")
    layout = "tag folders (copies of an image in several folders = several tags)"
    return _drop_unused(Found(root=root, classes=tags, items=items, layout=layout, notes=notes))


def _drop_unused(found: Found) -> Found:
    used = sorted({t for _, tags, _ in found.items for t in tags})
    if len(used) == len(found.classes):
        return found
    remap = {old: new for new, old in enumerate(used)}
    found.items = [(rel, tuple(remap[t] for t in tags), s) for rel, tags, s in found.items]
    found.classes = [found.classes[i] for i in used]
    return found


def multi_hot(items: list[tuple[str, tuple[int, ...]]], n_tags: int) -> np.ndarray:
    """N x n_tags 0/1 matrix of the items' tags."""
    out = np.zeros((len(items), n_tags), dtype=np.int8)
    for row, (_, tags) in enumerate(items):
        out[row, list(tags)] = 1
    return out


def multilabel_split(found: Found, val_split: float, test_split: float, seed: int
                     ) -> tuple[dict[str, list[tuple[str, tuple[int, ...]]]], list[str]]:
    """Given splits kept; the missing test, then val, carved from the rest, stratified per tag by iterative
    stratification (iterstrat's MultilabelStratifiedShuffleSplit, seeded: the same files and seed give the
    same split). Returns ({split: [(path, tags)]}, notes)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit
    given = {s: [(rel, t) for rel, t, sp in found.items if sp == s] for s in ("val", "test")}
    pool = sorted(((rel, t) for rel, t, sp in found.items if sp in (None, "train")), key=lambda it: natural_key(it[0]))
    out = {"train": pool, "val": given["val"], "test": given["test"]}
    notes = []
    for name, fraction in (("test", test_split), ("val", val_split)):
        if given[name] or fraction <= 0:
            continue
        rest = out["train"]
        # the fraction of the whole pool, taken from what is left (val after test)
        share = fraction / max(1e-9, 1.0 - (test_split if name == "val" and not given["test"] else 0.0))
        n = int(round(len(rest) * share))
        if n < 1 or n >= len(rest):
            notes.append(f"too few images for a {name} split of {fraction:.0%}: none carved")
            continue
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n, random_state=seed)
        keep, taken = next(splitter.split(np.zeros((len(rest), 1)), multi_hot(rest, len(found.classes))))
        out[name] = sorted([rest[i] for i in taken] + given[name], key=lambda it: natural_key(it[0]))
        out["train"] = [rest[i] for i in sorted(keep)]
    counts = {s: multi_hot(rows, len(found.classes)).sum(0) if rows else np.zeros(len(found.classes), int)
              for s, rows in out.items()}
    rare = [found.classes[i] for i in range(len(found.classes))
            if counts["train"][i] and any(len(out[s]) and counts[s][i] == 0 for s in ("val", "test"))]
    if rare:
        notes.append(f"{len(rare)} tag(s) too rare to reach every split (e.g. {', '.join(rare[:5])}): their "
                     f"val/test scores will be missing or noisy")
    return out, notes


def tag_statistics(split: dict[str, list[tuple[str, tuple[int, ...]]]], names: list[str],
                   top_pairs: int = 10) -> dict:
    """What check reports of the tags: images per tag per split, tags per image, untagged images, the most
    frequent pairs of tags, and tags with too few images to train or to score."""
    per_split = {s: dict(zip(names, multi_hot(rows, len(names)).sum(0).tolist())) if rows else dict.fromkeys(names, 0)
                 for s, rows in split.items()}
    every = [tags for rows in split.values() for _, tags in rows]
    pairs = Counter(p for tags in every for p in itertools.combinations(sorted(tags), 2))
    return {
        "images_per_tag": per_split,
        "tags_per_image": dict(sorted(Counter(len(t) for t in every).items())),
        "untagged": sum(1 for t in every if not t),
        "co_occurrence": [{"a": names[a], "b": names[b], "images": n} for (a, b), n in pairs.most_common(top_pairs)],
        "rare": [t for t in names if per_split["train"].get(t, 0) < 10],
    }
