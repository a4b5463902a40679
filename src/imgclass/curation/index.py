"""Nearest images by cosine similarity: an exact search (a matrix product) for small sets, usearch's HNSW graph
above EXACT_MAX vectors. The choice and the threshold are measured: `python bench/similarity.py` (RESULTS.md)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..core import log
from ..core.errors import UserError
from ..core.files import staged_file
from ..models.neighbours import exact_search, unit_rows

# Above this many vectors the approximate index answers. Measured on machine A (AMD EPYC, 2 cores, 1280-d vectors of
# 32 intrinsic dimensions, `python bench/similarity.py`, 2026-12-02): all-pairs 5 nearest neighbours (what `check`
# needs) cost 3.2 s exactly at 10,000 vectors (growing as n^2: 338 s at 100,000) against usearch's 14.5 s (build
# 7.1 s + search; 115 s at 100,000, recall@10 1.000 at both): the graph pays from about 40,000. A few queries alone
# are faster exactly even at 100,000 (100 in 0.21 s against a 64 s build): `similar` builds the graph only for as
# many queries as the build costs (a quarter of the vectors), and then saves it for the next time.
EXACT_MAX = 40_000
CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH = 16, 128, 128  # the graph's edges per node and search widths


class VectorIndex:
    """Unit vectors and how they are searched: exactly (kind "exact") or through usearch ("hnsw")."""

    def __init__(self, vectors: np.ndarray, kind: str = "auto", graph=None):
        self.vectors = unit_rows(vectors)
        self.kind = ("exact" if len(self.vectors) <= EXACT_MAX else "hnsw") if kind == "auto" else kind
        self.graph = graph
        if self.kind == "hnsw" and self.graph is None:
            self.graph = _build_graph(self.vectors)

    def search(self, queries: np.ndarray, k: int, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(indices, cosine similarities) of the k nearest vectors to each query, best first."""
        queries = unit_rows(queries)
        if self.kind == "exact":
            return exact_search(self.vectors, queries, k, exclude_self)
        extra = 1 if exclude_self else 0
        found = self.graph.search(queries, min(k + extra, len(self.vectors)))
        keys = np.asarray(found.keys, dtype=np.int64).reshape(len(queries), -1)
        sims = (1.0 - np.asarray(found.distances, dtype=np.float32)).reshape(len(queries), -1)
        if exclude_self:  # drop each row's own key (an exact duplicate may outrank it: drop by key, not rank)
            keep = keys != np.arange(len(queries))[:, None]
            keys = np.stack([row[m][:k] for row, m in zip(keys, keep)])
            sims = np.stack([row[m][:k] for row, m in zip(sims, keep)])
        return keys[:, :k], sims[:, :k]

    def save(self, path: Path, source_digest: str) -> None:
        """The HNSW graph beside its embeddings file (exact search needs nothing saved), with the digest of the
        vectors it indexes in its name, so a graph of older embeddings is never used."""
        if self.graph is not None:  # under a temporary name, then renamed: a kill or a second `similar` writing the
            # same graph never leaves a truncated one under the name later runs load
            with staged_file(graph_path(path, source_digest)) as tmp:
                self.graph.save(str(tmp))


def vectors_digest(vectors: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest()[:16]


def graph_path(embeddings_file: Path, digest: str) -> Path:
    return embeddings_file.with_name(f"{embeddings_file.stem}.{digest}.usearch")


def _usearch():
    try:
        from usearch.index import Index
    except ImportError:
        raise UserError(f"more than {EXACT_MAX:,} images need the usearch library for similarity search: "
                        "pip install usearch") from None
    return Index


def _build_graph(vectors: np.ndarray):
    index = _usearch()(ndim=vectors.shape[1], metric="cos", dtype="f32", connectivity=CONNECTIVITY,
                       expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
    index.add(np.arange(len(vectors), dtype=np.uint64), vectors)
    return index


def _restored(saved: Path, n: int):
    """The saved graph, when it loads and indexes exactly keys 0..n-1 (a damaged or foreign file is set aside with a
    warning and the graph built again: its keys index the paths, and a wrong key would name the wrong image)."""
    try:
        graph = _usearch().restore(str(saved))
        ok = graph is not None and len(graph) == n and bool(np.all(graph.contains(np.arange(n, dtype=np.uint64))))
    except Exception as exc:  # noqa: BLE001 - whatever usearch raises on a damaged file, the answer is to rebuild
        log.warning(f"{saved}: cannot be read ({exc}); building the similarity graph again")
        return None
    if not ok:
        log.warning(f"{saved} does not index these {n} embeddings; building the similarity graph again")
        return None
    return graph


def load_index(vectors: np.ndarray, embeddings_file: Path | None, queries: int) -> VectorIndex:
    """The search over an embeddings file's vectors for this many queries: its saved HNSW graph when there is one,
    else exact, unless the set is large and the queries many enough to pay for building (and saving) a graph."""
    if len(vectors) <= EXACT_MAX:
        return VectorIndex(vectors, "exact")
    digest = vectors_digest(vectors)
    saved = graph_path(embeddings_file, digest) if embeddings_file is not None else None
    if saved is not None and saved.is_file():
        graph = _restored(saved, len(vectors))
        if graph is not None:
            return VectorIndex(vectors, "hnsw", graph)
    if queries < len(vectors) // 4:
        return VectorIndex(vectors, "exact")
    index = VectorIndex(vectors, "hnsw")
    if embeddings_file is not None:
        index.save(embeddings_file, digest)
    return index
