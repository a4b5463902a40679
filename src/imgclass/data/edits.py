"""`train --exclude FILE` and `--relabel FILE`: the user's corrections to a data folder, applied to what
data/find.py found before the split is made, without moving or deleting a file. Paths are relative to DATA, as
splits.csv and check's label_issues.csv write them. A path that names no image in DATA is an error (a typo would
otherwise leave a bad image in silently); the excluded images are recorded in splits.csv (split "excluded")."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path, PurePosixPath

from ..core.errors import DataError
from ..core.spreadsheet import read_cell
from .find import Found


def _norm(path: str) -> str:
    return PurePosixPath(path.strip().replace("\\", "/")).as_posix()


def read_paths(file: str | Path) -> list[str]:
    """Paths from a CSV with a "path" column (check's label_issues.csv), or from a file of one path per line."""
    file = Path(file).expanduser()
    try:
        text = file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc.strerror or exc}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and "path" in next(csv.reader([lines[0]])):
        # read_cell: the path as given, where check wrote it behind a spreadsheet's text mark (core/spreadsheet.py)
        return [_norm(read_cell(row["path"])) for row in csv.DictReader(lines) if (row.get("path") or "").strip()]
    return [_norm(line) for line in lines]


def read_relabels(file: str | Path) -> dict[str, str]:
    """{path: new label} from a CSV with "path" and "label" columns."""
    file = Path(file).expanduser()
    try:
        with file.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise DataError(f"{file} needs the columns path,label (it has {', '.join(reader.fieldnames or [])})")
            return {_norm(read_cell(row["path"])): read_cell((row["label"] or "").strip()) for row in reader
                    if (row["path"] or "").strip()}
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc.strerror or exc}") from None


def _unknown(names: list[str], known: set[str], file: str | Path, what: str) -> None:
    missing = [n for n in names if n not in known]
    if missing:
        raise DataError(f"{len(missing)} path(s) in {file} are not {what} in the data (e.g. {missing[0]}); paths are "
                        f"relative to the data folder, as in splits.csv")


def apply_edits(found: Found, exclude: str | Path | None = None, relabel: str | Path | None = None) -> Found:
    """found without the excluded images and with the corrected labels (notes say how many)."""
    if not exclude and not relabel:
        return found
    items, notes, excluded = list(found.items), list(found.notes), []
    by_path = {rel: i for i, (rel, _, _) in enumerate(items)}
    if relabel:
        changes = read_relabels(relabel)
        _unknown(list(changes), set(by_path), relabel, "images")
        corrected = {rel: found.kind.relabel(text, found.classes, relabel) for rel, text in sorted(changes.items())}
        changed = 0
        for rel, label in corrected.items():
            i = by_path[rel]
            changed += items[i][1] != label
            items[i] = (rel, label, items[i][2])
        notes.append(f"{changed} image(s) relabelled from {relabel}")
    if exclude:
        drop = set(read_paths(exclude))
        _unknown(sorted(drop), set(by_path), exclude, "images")
        excluded = [(rel, found.kind.cell(found.kind.held(label, len(found.classes)), found.classes))
                    for rel, label, _ in items if rel in drop]
        items = [item for item in items if item[0] not in drop]
        notes.append(f"{len(excluded)} image(s) excluded by {exclude} (recorded in splits.csv as split 'excluded')")
    return dataclasses.replace(found, items=items, notes=notes, excluded=found.excluded + excluded)
