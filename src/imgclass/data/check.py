"""`imgclass check DATA`: what is in a folder before training on it.

Each file is read once (in a thread pool): its bytes give the content hash, Pillow's
header gives format, mode, size and EXIF orientation, a full decode proves it usable,
and imagehash's perceptual hash finds near duplicates. Duplicates are looked for
within and ACROSS the splits that `imgclass train` would use (leakage).
"""
from __future__ import annotations

import hashlib
import io
import os
import statistics
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from .decode import DEFAULT_MAX_PIXELS, ImageDecodeError, open_rgb
from .defaults import NEAR_DISTANCE, SPLIT_SEED, TEST_SPLIT, VAL_SPLIT
from .find import IMAGE_EXTENSIONS
from .labels import LabelSource, kind_of_options
from .split import SPLITS, make_split

FORMAT_EXTENSIONS = {"JPEG": {".jpg", ".jpeg"}, "PNG": {".png"}, "GIF": {".gif"}, "BMP": {".bmp"},
                     "WEBP": {".webp"}, "TIFF": {".tif", ".tiff"}, "MPO": {".jpg", ".jpeg"}}
SMALL_SIDE = 32          # images with a shorter side are reported as very small
NEAR_MIN_SIDE = 16       # below this the perceptual hash is noise (on 8x8 digits, 4 bits matched different images)
SIZE_BINS = [0, 32, 64, 128, 256, 512, 1024, 2048, 10**9]


@dataclass
class FileInfo:
    path: str
    split: str
    label: str                   # as splits.csv writes it (a class; several tags: their JSON list)
    counted: tuple[str, ...] = ()  # the classes (tags) it counts towards
    bytes: int = 0
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    exif_rotated: bool = False
    extension_mismatch: bool = False
    sha256: str = ""
    phash: int | None = None
    error: str | None = None


def inspect_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Header facts, content hash, perceptual hash, or the reason the file is unusable."""
    import imagehash
    out: dict[str, Any] = {}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return {"error": f"cannot read: {exc.strerror or exc}"}
    out["bytes"] = len(raw)
    out["sha256"] = hashlib.sha256(raw).hexdigest()
    try:
        with Image.open(io.BytesIO(raw)) as img:
            out.update(format=img.format, mode=img.mode, width=img.width, height=img.height)
            out["exif_rotated"] = img.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # noqa: BLE001 - open_rgb below gives the precise reason
        pass
    if out.get("format"):
        out["extension_mismatch"] = path.suffix.lower() not in FORMAT_EXTENSIONS.get(out["format"], {path.suffix.lower()})
    try:
        rgb = open_rgb(raw, draft_size=64, max_pixels=max_pixels)
        out["phash"] = int(str(imagehash.phash(rgb)), 16)
    except ImageDecodeError as exc:
        out["error"] = str(exc)
    return out


def _near_pairs(hashes: list[tuple[int, int]], max_distance: int) -> list[tuple[int, int, int]]:
    """Pairs (i, j, distance) of 64-bit hashes within max_distance, via band buckets:
    two hashes within d bits agree exactly on at least one of d+1 bands (pigeonhole),
    so only hashes sharing a band are compared, not all N^2 pairs."""
    bands = max_distance + 1
    width = -(-64 // bands)
    found: dict[tuple[int, int], int] = {}
    for b in range(bands):
        buckets: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for idx, h in hashes:
            buckets[(h >> (b * width)) & ((1 << width) - 1)].append((idx, h))
        for members in buckets.values():
            if len(members) < 2:
                continue
            for a in range(len(members)):
                ia, ha = members[a]
                for c in range(a + 1, len(members)):
                    ic, hc = members[c]
                    key = (min(ia, ic), max(ia, ic))
                    if key not in found:
                        d = bin(ha ^ hc).count("1")
                        if d <= max_distance:
                            found[key] = d
    return sorted((i, j, d) for (i, j), d in found.items())


@dataclass
class CheckReport:
    root: str
    layout: str
    classes: list[str]
    counts: dict[str, dict[str, int]]                 # split -> class -> usable images
    imbalance: dict[str, float]                       # split -> max/min class count
    sizes: dict[str, Any]
    formats: dict[str, int]
    modes: dict[str, int]
    unusable: list[dict[str, str]]
    extension_mismatch: list[str]
    exif_rotated: list[str]
    small: list[str]
    exact_duplicates: list[list[str]]                 # groups of identical files
    near_duplicates: list[dict[str, Any]]             # pairs with their distance
    leakage: list[dict[str, Any]]                     # duplicate pairs that sit in different splits
    ignored: list[str]                                # non-image files
    notes: list[str] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    coarse_counts: dict[str, dict[str, int]] | None = None  # two-level labels: split -> coarse class -> images
    tag_stats: dict[str, Any] | None = None           # multi-label: tags per image, untagged, co-occurrence, rare
    label_issues: list[dict[str, Any]] | None = None  # --label-issues: suspected label errors (curation/data_checks)
    embedding_duplicates: list[dict[str, Any]] | None = None  # --embeddings: near-duplicate pairs by embedding
    files: dict[str, str] = field(default_factory=dict)       # what the embedding checks wrote (csv, map, gallery)

    @property
    def problems(self) -> int:
        return (len(self.unusable) + len(self.leakage) + len(self.exact_duplicates) + len(self.near_duplicates)
                + len(self.label_issues or []) + len(self.embedding_duplicates or []))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _repr_html_(self) -> str:  # a notebook cell showing a check report
        from ..core.notebook import paragraphs, table
        splits = [s for s in self.counts if s != "all"]
        rows = [[c] + [self.counts[s][c] for s in splits] + [self.counts["all"][c]] for c in self.classes]
        found = (f"{len(self.unusable)} unusable file(s), {len(self.exact_duplicates)} exact and "
                 f"{len(self.near_duplicates)} near duplicate group(s), {len(self.leakage)} leak(s) across splits")
        return (table(["class"] + splits + ["all"], rows, f"{self.root} ({self.layout})")
                + paragraphs([found] + self.notes + self.recommendations))


def check_dataset(data: str | Path, labels: str | Path | None = None, id_column: str | None = None,
                  label_column: str | None = None, hierarchy: bool = False, label_columns: str | None = None,
                  val_split: float = VAL_SPLIT, test_split: float = TEST_SPLIT, seed: int = SPLIT_SEED,
                  workers: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS, near_distance: int = NEAR_DISTANCE,
                  on_progress: Callable[[int, int], None] | None = None, multi_label: bool = False,
                  tag_columns: str | None = None) -> CheckReport:
    """multi_label (or tag_columns): several tags per image (data/tags.py: label_column names the tag-list
    column); counts are then images per tag, and the report adds the tags' statistics."""
    kind = kind_of_options(multi_label, tag_columns)
    found = kind.find(LabelSource(data, labels, id_column, label_column, tag_columns, hierarchy, label_columns))
    split, split_notes = make_split(found, val_split, test_split, seed)
    infos = [FileInfo(path=rel, split=s, label=kind.cell(label, found.classes),
                      counted=tuple(found.classes[i] for i in kind.counted(label)))
             for s in SPLITS for rel, label in split.items[s]]
    done = 0

    def work(i: int) -> None:
        for key, value in inspect_file(found.root / infos[i].path, max_pixels).items():
            setattr(infos[i], key, value)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for _ in pool.map(work, range(len(infos))):
            done += 1
            if on_progress:
                on_progress(done, len(infos))

    good = [f for f in infos if f.error is None]
    counts = {s: {c: 0 for c in found.classes} for s in SPLITS}
    for f in good:
        for name in f.counted:
            counts[f.split][name] += 1
    counts["all"] = {c: sum(counts[s][c] for s in SPLITS) for c in found.classes}
    imbalance = {s: (max(v.values()) / max(min(v.values()), 1)) for s, v in counts.items() if sum(v.values())}
    sizes = _size_summary(good)

    exact, near, leakage = _duplicates(infos, good, near_distance)
    ignored = sorted(p.relative_to(found.root).as_posix() for p in found.root.rglob("*")
                     if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS)
    report = CheckReport(
        root=str(found.root), layout=found.layout, classes=found.classes, counts=counts, imbalance=imbalance,
        sizes=sizes, formats=dict(Counter(f.format for f in good)), modes=dict(Counter(f.mode for f in good)),
        unusable=[{"path": f.path, "split": f.split, "reason": f.error} for f in infos if f.error],
        extension_mismatch=[f"{f.path} (content is {f.format})" for f in infos if f.extension_mismatch],
        exif_rotated=[f.path for f in good if f.exif_rotated],
        small=[f"{f.path} ({f.width}x{f.height})" for f in good if min(f.width, f.height) < SMALL_SIDE],
        exact_duplicates=[[f.path for f in g] for g in exact], near_duplicates=near, leakage=leakage,
        ignored=ignored, notes=found.notes + split_notes)
    across = sum(1 for group in exact if len({f.label for f in group}) > 1)
    if across and kind.copies_hint:
        report.notes.append(f"{across} image(s) {kind.copies_hint}")
    tiny = sum(1 for f in good if min(f.width, f.height) < NEAR_MIN_SIDE)
    if tiny:
        report.notes.append(f"{tiny} image(s) under {NEAR_MIN_SIDE} px are left out of the near-duplicate search "
                            f"(a perceptual hash of so few pixels is not reliable); exact duplicates still count")
    if found.parents is not None:
        report.coarse_counts = {s: {c: 0 for c in found.coarse_classes} for s in counts}
        for s, per in counts.items():
            for fine, n in per.items():
                report.coarse_counts[s][found.coarse_classes[found.parents[found.classes.index(fine)]]] += n
    usable = {f.path for f in good}
    report.tag_stats = kind.statistics({s: [(rel, label) for rel, label in split.items[s] if rel in usable]
                                        for s in SPLITS}, found.classes)
    report.recommendations = recommendations(report)
    return report


def _size_summary(good: list[FileInfo]) -> dict[str, Any]:
    sides = [max(f.width, f.height) for f in good]
    hist = Counter(np.digitize(sides, SIZE_BINS[1:-1]).tolist()) if sides else Counter()
    return {"min": [min(f.width for f in good), min(f.height for f in good)] if good else None,
            "median": [statistics.median(f.width for f in good), statistics.median(f.height for f in good)] if good else None,
            "max": [max(f.width for f in good), max(f.height for f in good)] if good else None,
            "longer_side_histogram": {f"{SIZE_BINS[b]}-{SIZE_BINS[b + 1] - 1}" if b < len(SIZE_BINS) - 2
                                      else f">={SIZE_BINS[b]}": hist[b] for b in range(len(SIZE_BINS) - 1) if hist[b]}}


def _duplicates(infos: list[FileInfo], good: list[FileInfo], near_distance: int
                ) -> tuple[list[list[FileInfo]], list[dict], list[dict]]:
    """(exact duplicate groups, near-duplicate pairs, pairs that leak across splits)."""
    by_hash: dict[str, list[FileInfo]] = defaultdict(list)
    for f in infos:
        if f.sha256 and f.bytes:
            by_hash[f.sha256].append(f)
    exact = [sorted(g, key=lambda f: f.path) for g in by_hash.values() if len(g) > 1]
    leakage = []
    for group in exact:
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                if group[a].split != group[b].split:
                    leakage.append({"a": group[a].path, "a_split": group[a].split, "b": group[b].path,
                                    "b_split": group[b].split, "kind": "exact"})
    first_of_exact = {id(g[0]) for g in exact}
    hashed = [(i, f.phash) for i, f in enumerate(good) if f.phash is not None and min(f.width, f.height) >= NEAR_MIN_SIDE
              and (f.sha256 not in by_hash or len(by_hash[f.sha256]) == 1 or id(f) in first_of_exact)]
    near = []
    for i, j, d in _near_pairs(hashed, near_distance):
        a, b = good[i], good[j]
        if a.sha256 == b.sha256:
            continue
        near.append({"a": a.path, "a_split": a.split, "b": b.path, "b_split": b.split, "distance": d})
        if a.split != b.split:
            leakage.append({"a": a.path, "a_split": a.split, "b": b.path, "b_split": b.split, "kind": f"near ({d} bits)"})

    return exact, near, leakage


def recommendations(r: CheckReport) -> list[str]:
    out = []
    train_imb = r.imbalance.get("train", 1.0)
    if train_imb > 3:
        out.append(f"classes are imbalanced {train_imb:.1f}x in train: train with --class-weights auto or "
                   f"--balanced-sampler, and judge by balanced accuracy / macro F1")
    if r.leakage:
        out.append(f"{len(r.leakage)} duplicate pair(s) sit in different splits (leakage): remove the copies from "
                   f"val/test (or train) before trusting test accuracy")
    if r.exact_duplicates:
        out.append(f"{len(r.exact_duplicates)} group(s) of identical files: keep one of each")
    if r.unusable:
        out.append(f"{len(r.unusable)} file(s) cannot be used and will be skipped: re-download or remove them")
    if r.extension_mismatch:
        out.append(f"{len(r.extension_mismatch)} file(s) have an extension that does not match their content "
                   f"(harmless here; other tools may choke)")
    few = [c for c, n in r.counts["train"].items() if n < 10]
    if few:
        out.append(f"classes with fewer than 10 training images: {', '.join(few[:10])}: add images, or expect "
                   f"unreliable per-class numbers")
    if r.small:
        out.append(f"{len(r.small)} image(s) under {SMALL_SIDE} px on a side: pick --img-size accordingly")
    if r.label_issues:
        out.append(f"{len(r.label_issues)} suspected label error(s): look at them in {r.files.get('report')}; "
                   f"`train --exclude {r.files.get('label_issues')}` leaves them out, `--relabel FILE` (path,label) "
                   f"corrects those you confirm")
    if r.embedding_duplicates:
        out.append(f"{len(r.embedding_duplicates)} near-duplicate pair(s) by embedding (crops, re-encodes, or very "
                   f"alike images): see {r.files.get('near_duplicates')}")
    return out
