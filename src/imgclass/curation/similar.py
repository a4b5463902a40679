"""`imgclass similar INDEX_OR_DATA QUERY...`: the images nearest to each query by cosine similarity of their
embeddings, as a list and an HTML gallery. The index is an `imgclass embed` file (its HNSW graph, for large sets,
built once and saved beside it); a data folder is embedded first, by a trained model or a published backbone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..prediction.embed import EmbeddingModel, Embeddings, embed, embed_files, embedding_model, model_of
from ..inference.predictor import expand_inputs
from .gallery import Tile, write_gallery
from .index import load_index

DEFAULT_BACKBONE = "timm:tf_efficientnet_lite0"  # ImageNet weights that install with imgclass


def backbone(model: str | Path | None, device: str = "auto") -> EmbeddingModel:
    """What embeds a folder here: a run folder or model file, a published backbone (timm:NAME, as it is), or by
    default EfficientNet-Lite0's ImageNet backbone."""
    name = model or DEFAULT_BACKBONE
    return embedding_model(name, pretrained=str(name).startswith("timm:"), device=device)


def embeddings_of(index_or_data: str | Path, model: str | Path | None = None, device: str = "auto"
                  ) -> tuple[Embeddings, Path | None]:
    """(the embeddings, the file they came from, or None for a folder embedded now): an embeddings file is read;
    a folder is embedded by `model` (a run folder or model file; default: the ImageNet backbone as it is)."""
    path = Path(index_or_data).expanduser()
    if path.is_dir():
        return embed(backbone(model, device), path), None
    if not path.exists() and not path.with_suffix(".npy").exists():
        raise UserError(f"no embeddings file or data folder at {path}")
    if model is not None:
        raise UserError("--model applies to a data folder; an embeddings file keeps the model that computed it")
    return Embeddings.load(path), path if path.suffix == ".parquet" else path.with_suffix(".npy")


def similar(index_or_data: str | Path, queries: list[str | Path], k: int = 8, out: str | Path | None = "similar.html",
            model: str | Path | None = None, device: str = "auto") -> list[dict[str, Any]]:
    """For each query image: {"query", "neighbours": [{"path", "label", "similarity"}, ...]} best first (or
    {"query", "error"} when it cannot be read); out: the HTML gallery (None: none)."""
    if k < 1:
        raise UserError("-k must be at least 1")
    emb, file = embeddings_of(index_or_data, model, device)
    if not len(emb):
        raise UserError(f"no images in {index_or_data}")
    files = expand_inputs(queries)
    vectors, errors = embed_files(model_of(emb, device), files)
    index = load_index(emb.vectors, file, len(files))
    good = [i for i, e in enumerate(errors) if e is None]
    found = index.search(vectors[good], k) if good else (np.zeros((0, k), int), np.zeros((0, k)))
    results: list[dict[str, Any]] = [{"query": str(f), "error": e} for f, e in zip(files, errors)]
    for row, i in enumerate(good):
        results[i] = {"query": str(files[i]), "neighbours": [
            {"path": emb.paths[j], "label": emb.labels[j], "similarity": float(s)}
            for j, s in zip(found[0][row].tolist(), found[1][row].tolist())]}
    if out is not None:
        root = Path(emb.root).expanduser().resolve()
        rows = [(f"{r['query']}: " + (r["error"] if "error" in r else f"{len(r['neighbours'])} nearest"),
                 [Tile(Path(r["query"]), "query")] + [Tile(_inside(root, n["path"]), f"{n['similarity']:.3f} "
                                                                                    f"{n['label']} {n['path']}")
                                                      for n in r.get("neighbours", [])]) for r in results]
        write_gallery(Path(out).expanduser(), "imgclass similar",
                      [f"{len(emb)} images embedded by {emb.source}; cosine similarity, best first; thumbnails "
                       f"read from {root}"], rows)
    return results


def _inside(root: Path, relative: str) -> Path | None:
    """The image a neighbour names, when it really lies in the embedded folder (a link out of it, or a folder that
    is not there, shows the caption alone): an embeddings file names its folder itself, and a gallery must not
    become a way to copy any image on this machine into an HTML page."""
    if not root.is_dir():
        return None
    path = (root / relative).resolve()
    return path if path.is_relative_to(root) else None
