"""What `imgclass check --label-issues` (and `--embeddings`) adds to the file checks: every image embedded once
(a trained model's features, or by default the ImageNet backbone that installs with imgclass), then
- suspected label errors (curation/label_issues.py: out-of-fold probabilities ranked by cleanlab),
- near-duplicates and cross-split leakage by embedding similarity, which the perceptual hash misses for crops and
  re-encodes,
- a 2-D map of the data (scikit-learn's t-SNE) coloured by class, the suspects and the outliers marked,
written as label_issues.csv, near_duplicates.csv, data_map.png and check_report.html (a gallery of each)."""
from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.check import CheckReport, recommendations
from ..data.defaults import NEAR_COSINE, SPLIT_SEED, TEST_SPLIT, VAL_SPLIT
from ..data.find import Found
from ..data.labels import CLASSES, LabelSource
from ..data.split import SPLITS, Split, make_split
from ..core import log
from ..core.errors import UserError
from ..core.spreadsheet import safe_cell
from ..core.files import write_bytes_atomic, write_text_atomic
from ..evaluation.plots import data_map
from ..core.figures import png_bytes
from ..prediction.embed import Embeddings, embed_rows
from .gallery import Tile, write_gallery
from .index import VectorIndex
from .label_issues import find_label_issues, out_of_fold_probabilities
from .similar import backbone

NEAR_K = 8  # nearest others searched per image for near-duplicates (a group of copies larger than this is still
#            joined, through its members' own neighbours)
SHOWN_AT_MOST = 300  # of each kind of finding, in check's gallery and in the workbench's review (most telling first)
OUTLIER_SHARE = 0.01  # the images farthest from their nearest neighbours are marked on the map as outliers


@dataclass(frozen=True)
class Findings:
    label_issues: list[dict[str, Any]] = field(default_factory=list)
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    leakage: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def add_embedding_checks(report: CheckReport, data: str | Path, out: str | Path = "check_report",
                         model: str | Path | None = None, label_issues: bool = True, near_cosine: float = NEAR_COSINE,
                         labels: str | Path | None = None, id_column: str | None = None, label_column: str | None = None,
                         hierarchy: bool = False, label_columns: str | None = None, val_split: float = VAL_SPLIT,
                         test_split: float = TEST_SPLIT, seed: int = SPLIT_SEED, device: str = "auto", **_: Any
                         ) -> CheckReport:
    """The report with what the embeddings show added (its leakage, notes and recommendations updated)."""
    if report.tag_stats is not None:
        raise UserError("--label-issues and --embeddings take one label per image (or two levels) for now")
    found = CLASSES.find(LabelSource(data, labels, id_column, label_column, hierarchy=hierarchy,
                                     label_columns=label_columns))
    split, _ = make_split(found, val_split, test_split, seed)
    findings = embedding_checks(found, split, out, model, label_issues, near_cosine, seed=seed, device=device)
    report = dataclasses.replace(report, label_issues=findings.label_issues if label_issues else None,
                                 embedding_duplicates=findings.near_duplicates, leakage=report.leakage + findings.leakage,
                                 notes=report.notes + findings.notes, files=findings.files)
    return dataclasses.replace(report, recommendations=recommendations(report))


def embedding_checks(found: Found, split: Split, out: str | Path, model: str | Path | None = None,
                     label_issues: bool = True, near_cosine: float = NEAR_COSINE, folds: int = 5, seed: int = 0,
                     device: str = "auto") -> Findings:
    """Embed every image of the split once, then look for label issues (if asked), near-duplicates and leakage, and
    write their files and the gallery into out."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    em = backbone(model, device)
    rows = [(rel, label) for s in SPLITS for rel, label in split.items[s]]
    split_of = {rel: s for s in SPLITS for rel, _ in split.items[s]}
    log.info(f"embedding {len(rows)} images with {em.source} at {em.pre.img_size} px (decoded once into the cache; "
             f"EfficientNet-Lite0 embedded fashion_hier at about 30 images/s on 2 CPU cores, decoding included)")
    emb = embed_rows(em, found.root, rows, found.classes)
    labels = np.array([found.classes.index(x) for x in emb.labels])
    notes = [f"{len(emb)} images embedded by {em.source} ({emb.vectors.shape[1]} features)"]
    index = VectorIndex(emb.vectors)
    # every image's NEAR_K nearest others: once, for all below
    nearest = index.search(emb.vectors, min(NEAR_K, len(emb) - 1), exclude_self=True) if len(emb) > 1 else None
    issues = _label_issues(emb, labels, split_of, found.classes, folds, seed, notes) if label_issues else None
    near, leakage = near_duplicate_pairs(emb, index, split_of, near_cosine, nearest)
    first = nearest[1][:, 0] if nearest is not None else np.zeros(len(emb), np.float32)
    files = _write_findings(out, emb, labels, found.classes, issues, near, first, near_cosine, notes)
    return Findings(issues or [], near, leakage, notes, files)


def _label_issues(emb: Embeddings, labels: np.ndarray, split_of: dict[str, str], classes: list[str], folds: int,
                  seed: int, notes: list[str]) -> list[dict[str, Any]]:
    oof = out_of_fold_probabilities(emb.vectors, labels, folds, seed)
    judged = oof.judged
    accuracy = float((oof.probs[judged].argmax(1) == labels[judged]).mean())
    found = find_label_issues(oof.probs, labels)
    notes.append(f"label issues: a linear head in {oof.folds} folds on the embeddings answers {accuracy:.1%} of the "
                 f"given labels out of fold; confident learning (cleanlab) flags {len(found)} image(s)")
    if not judged.all():
        alone = sorted({classes[i] for i in labels[~judged]})
        notes.append(f"label issues: {int((~judged).sum())} image(s) not judged: their class has a single image "
                     f"({', '.join(alone[:10])}{' ...' if len(alone) > 10 else ''}), so no fold could learn it")
    return [{"path": emb.paths[i.index], "split": split_of.get(emb.paths[i.index], ""), "given_label": classes[i.given],
             "suggested_label": classes[i.suggested], "quality": round(i.quality, 4),
             "given_probability": round(i.given_probability, 4),
             "suggested_probability": round(i.suggested_probability, 4)} for i in found]


def near_duplicate_pairs(emb: Embeddings, index: VectorIndex, split_of: dict[str, str], near_cosine: float,
                     found: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every pair among each image's NEAR_K nearest at least near_cosine alike, most similar first, each with its group
    (the copies that hang together: three near-copies are three pairs of one group, so a leak through the third copy
    is listed too); pairs in different splits leak. found: each image's nearest others and similarities, when
    already searched."""
    if len(emb) < 2:
        return [], []
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    nearest, sims = found if found is not None else index.search(emb.vectors, min(NEAR_K, len(emb) - 1),
                                                                 exclude_self=True)
    pairs: dict[tuple[int, int], float] = {}
    for i, (row, row_sims) in enumerate(zip(nearest.tolist(), sims.tolist())):
        for j, s in zip(row, row_sims):
            if s >= near_cosine and i != j:
                key = (min(i, j), max(i, j))
                pairs[key] = max(pairs.get(key, -1.0), s)
    if not pairs:
        return [], []
    ends = np.array(list(pairs), dtype=np.int64)
    graph = coo_matrix((np.ones(len(ends)), (ends[:, 0], ends[:, 1])), shape=(len(emb), len(emb)))
    _, group_of = connected_components(graph, directed=False)
    numbered: dict[int, int] = {}  # groups numbered from 1 in order of their most similar pair
    near, leakage = [], []
    for (i, j), s in sorted(pairs.items(), key=lambda item: -item[1]):
        group = numbered.setdefault(int(group_of[i]), len(numbered) + 1)
        a, b = emb.paths[i], emb.paths[j]
        pair = {"a": a, "a_split": split_of.get(a, ""), "b": b, "b_split": split_of.get(b, ""),
                "similarity": round(float(s), 4), "group": group}
        near.append(pair)
        if pair["a_split"] != pair["b_split"]:
            leakage.append({**{k: v for k, v in pair.items() if k not in ("similarity", "group")},
                            "kind": f"embedding ({s:.3f})"})
    return near, leakage


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: safe_cell(v) for k, v in row.items()} for row in rows)  # names never run as formulas
    return buffer.getvalue()


def _write_findings(out: Path, emb: Embeddings, labels: np.ndarray, classes: list[str], issues: list[dict] | None,
                    near: list[dict], nearest_similarity: np.ndarray, near_cosine: float, notes: list[str]
                    ) -> dict[str, str]:
    root = Path(emb.root)
    files = {}
    if issues is not None:
        files["label_issues"] = str(out / "label_issues.csv")
        write_text_atomic(out / "label_issues.csv", _csv_text(issues, ["path", "split", "given_label", "suggested_label",
                                                                       "quality", "given_probability",
                                                                       "suggested_probability"]))
    files["near_duplicates"] = str(out / "near_duplicates.csv")
    write_text_atomic(out / "near_duplicates.csv", _csv_text(near, ["group", "a", "a_split", "b", "b_split",
                                                                    "similarity"]))
    issues = issues or []
    position = {p: i for i, p in enumerate(emb.paths)}
    distance = 1 - nearest_similarity if len(emb) > 1 else np.zeros(len(emb))
    n_out = max(1, int(round(OUTLIER_SHARE * len(emb))))
    outliers = set(np.argsort(-distance, kind="stable")[:n_out].tolist())
    png = png_bytes(data_map(emb.normalized(), labels, classes, {"suspected label error": {position[i["path"]]
                                                                                           for i in issues},
                                                                 "outlier": outliers}))
    write_bytes_atomic(out / "data_map.png", png)
    files["data_map"] = str(out / "data_map.png")
    rows = [(f"suspected label error {n + 1}: given {i['given_label']}, suggested {i['suggested_label']}",
             [Tile(root / i["path"], f"{i['path']} ({i['split']}): given {i['given_label']} "
                                     f"p={i['given_probability']:.2f}, suggested {i['suggested_label']} "
                                     f"p={i['suggested_probability']:.2f}")]) for n, i in enumerate(issues[:SHOWN_AT_MOST])]
    rows += [(f"near-duplicates, similarity {p['similarity']:.3f}",
              [Tile(root / p["a"], f"{p['a']} ({p['a_split']})"), Tile(root / p["b"], f"{p['b']} ({p['b_split']})")])
             for p in near[:SHOWN_AT_MOST]]
    rows += [(f"outlier {n + 1}", [Tile(root / emb.paths[i], f"{emb.paths[i]}: {emb.labels[i]}, nearest similarity "
                                                             f"{1 - distance[i]:.3f}")])
             for n, i in enumerate(sorted(outliers, key=lambda i: -distance[i]))]
    intro = notes + [f"{len(issues)} suspected label error(s) (most suspect first), {len(near)} near-duplicate pair(s) "
                     f"at cosine similarity >= {near_cosine} (among each image's {NEAR_K} nearest, in groups), the {n_out} outlier(s) "
                     f"farthest from any other image. The galleries show the first {SHOWN_AT_MOST} of each."]
    files["report"] = str(write_gallery(out / "check_report.html", "imgclass check: what the embeddings show", intro,
                                        rows, {"map of the data": png}))
    return files
