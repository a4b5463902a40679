"""Nearest neighbours among embeddings by cosine similarity, exactly (blocked matrix products): what the rejection
rule (models/reject.py) and the similarity index (curation/index.py) both search with."""
from __future__ import annotations

import numpy as np

BLOCK = 2048  # query rows per matrix product: 2048 x 100,000 float32 similarities is 0.8 GB at most


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine similarity is then a dot product), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def exact_search(base: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities), each len(queries) x k, best first, over unit vectors. exclude_self: the queries
    are base itself, and each row leaves out its own index."""
    k = min(k, len(base) - (1 if exclude_self else 0))
    indices = np.zeros((len(queries), max(k, 0)), dtype=np.int64)
    sims = np.zeros((len(queries), max(k, 0)), dtype=np.float32)
    if k <= 0:
        return indices, sims
    for start in range(0, len(queries), BLOCK):
        block = queries[start:start + BLOCK] @ base.T
        if exclude_self:
            rows = np.arange(len(block))
            block[rows, start + rows] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(block, top, 1), axis=1, kind="stable")
        indices[start:start + len(block)] = np.take_along_axis(top, order, 1)
        sims[start:start + len(block)] = np.take_along_axis(block, indices[start:start + len(block)], 1)
    return indices, sims
