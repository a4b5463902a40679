"""Similarity search: time to build and query an index of 10,000 and 100,000 vectors, exact (a matrix product)
against usearch's HNSW graph, and the graph's recall@10 against the exact answer; plus all-pairs neighbours
(what `check` needs for near-duplicates), the case that sets curation/index.EXACT_MAX.

    python bench/similarity.py [--sizes 10000,100000] [--queries 100]

The vectors: 1280-d like EfficientNet-Lite0's features, on a 32-dimensional manifold of 200 clusters (real
embeddings are clustered and of low intrinsic dimension; i.i.d. noise in 1280 dimensions makes every point of a
cluster about equally near, a case where no index, and no nearest neighbour, means anything).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from common import machine
from imgclass.curation.index import VectorIndex
from imgclass.models.neighbours import exact_search, unit_rows


def clustered(n: int, dim: int = 1280, intrinsic: int = 32, clusters: int = 200, seed: int = 0) -> np.ndarray:
    """Unit vectors on a low-dimensional manifold, as real embeddings lie (a mixture of `clusters` Gaussians in
    `intrinsic` dimensions, mapped linearly into `dim`, plus a little isotropic noise). Fixed seed: the same
    vectors in every run; queries use another seed."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(123).standard_normal((intrinsic, dim)).astype(np.float32)
    centres = np.random.default_rng(456).standard_normal((clusters, intrinsic)).astype(np.float32) * 2
    z = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, intrinsic)).astype(np.float32)
    return unit_rows(z @ basis + 0.5 * rng.standard_normal((n, dim)).astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--all-pairs-max", type=int, default=20000, help="all-pairs exact search is timed up to here "
                        "and extrapolated (n^2) above")
    args = parser.parse_args()
    print(machine())
    for n in map(int, args.sizes.split(",")):
        base = clustered(n)
        queries = clustered(args.queries, seed=1)
        t = time.perf_counter()
        exact_i, _ = exact_search(base, queries, 10)
        exact_q = time.perf_counter() - t
        t = time.perf_counter()
        index = VectorIndex(base, "hnsw")
        build = time.perf_counter() - t
        t = time.perf_counter()
        approx_i, _ = index.search(queries, 10)
        approx_q = time.perf_counter() - t
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx_i, exact_i)])
        m = min(n, args.all_pairs_max)
        t = time.perf_counter()
        exact_search(base[:m], base[:m], 5, exclude_self=True)
        pairs = (time.perf_counter() - t) * (n / m) ** 2
        t = time.perf_counter()
        index.search(base, 5, exclude_self=True)
        graph_pairs = time.perf_counter() - t
        print(f"n={n}: exact {args.queries} queries {exact_q:.3f}s | hnsw build {build:.2f}s, {args.queries} queries "
              f"{approx_q:.3f}s, recall@10 {recall:.3f} | all-pairs 5-NN: exact {pairs:.1f}s"
              f"{' (extrapolated from ' + str(m) + ')' if m < n else ''}, hnsw {graph_pairs:.1f}s "
              f"(+ build: {graph_pairs + build:.1f}s; ratio exact/hnsw {pairs / (graph_pairs + build):.2f})")


if __name__ == "__main__":
    main()
