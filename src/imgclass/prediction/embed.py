"""`imgclass embed`: one vector per image, the pooled backbone features a model classifies from (a trained model
file's, or a published ImageNet backbone's as it is). They are computed exactly as the head stage of fine-tuning
computes them (models/inference.compute_features) from the images decoded by the model file's own preprocessing,
through the decoded-image cache, so `embed` of a model equals the features its training saw.

An embeddings file is three files side by side, each written atomically: NAME.npy (N x D float32, no pickle),
NAME.csv (path,label: one row per vector, in order) and NAME.json (the model that computed them, its
preprocessing, the folder the paths are relative to, the images that could not be read). The .json is written
last and names the row count, so a reader never pairs vectors with the wrong rows. `--out NAME.parquet` writes one
Parquet file instead (the `parquet` extra: pyarrow).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import torch

from ..data.cache import load_cached
from ..data.find import find_images
from ..data.images import load_split
from ..data.preprocess import Preprocessing, to_nchw
from ..core import log
from ..core.errors import UserError
from ..core.extras import require
from ..core.files import write_bytes_atomic
from ..models.inference import compute_features, pick_device
from ..models.neighbours import unit_rows
from ..models.pretrained import imagenet_preprocessing, timm_pretrained
from ..inference.predictor import Predictor, expand_inputs

FORMAT = "imgclass-embeddings"


@dataclass(frozen=True)
class EmbeddingModel:
    """What computes embeddings: a network with `features`, the preprocessing its images get, and its name."""
    net: torch.nn.Module
    pre: Preprocessing
    source: str            # the model file's path, or timm:NAME for a published backbone
    pretrained: bool       # source is a published backbone (timm:NAME), not a model file
    device: torch.device


def embedding_model(model: str | Path | Predictor, pretrained: bool = False, device: str = "auto") -> EmbeddingModel:
    """A trained model (run folder, model file or a loaded Predictor), or with pretrained a published ImageNet
    backbone as it is (timm:NAME; its weights installed or in the hub cache: nothing is downloaded offline)."""
    if isinstance(model, Predictor):
        if model.model is None:
            raise UserError(f"embeddings need the model file (model.safetensors), not an {model.exported_as} export")
        return EmbeddingModel(model.model.eval(), model.pre, str(model.path or "<model>"), False, model.device)
    if pretrained:
        source, _, arch = str(model).partition(":")
        if source != "timm" or not arch:
            raise UserError(f"--pretrained takes a timm backbone name, e.g. timm:tf_efficientnet_lite0 (not '{model}')")
        dev = pick_device(device)
        net = timm_pretrained(arch, str(model), num_classes=0).to(dev).eval()
        net.features = net.forward  # num_classes=0: timm's forward returns the pooled features
        return EmbeddingModel(net, imagenet_preprocessing(arch), str(model), True, dev)
    if str(model).startswith(("timm:", "torchvision:")):
        raise UserError(f"'{model}' names a backbone: add --pretrained to embed with its ImageNet weights")
    return embedding_model(Predictor.load(model, device), device=device)


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray                   # N x D float32, one row per path
    paths: tuple[str, ...]                # relative to root
    labels: tuple[str, ...]               # each image's label ("" where the folder gives none)
    root: str                             # the folder the paths are relative to
    source: str                           # the model that computed them (model file path, or timm:NAME)
    pretrained: bool = False              # source is a published backbone
    preprocessing: dict[str, Any] = field(default_factory=dict)  # how the images were decoded and resized
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason) of images that could not be read

    def __len__(self) -> int:
        return len(self.paths)

    def normalized(self) -> np.ndarray:
        """Unit-length rows (cosine similarity is then a dot product)."""
        return unit_rows(self.vectors)

    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "n": len(self), "dim": int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0,
                "root": self.root, "source": self.source, "pretrained": self.pretrained,
                "preprocessing": self.preprocessing, "skipped": [list(s) for s in self.skipped]}

    def save(self, out: str | Path) -> Path:
        """NAME.npy + NAME.csv + NAME.json (or NAME.parquet); returns the path the user named."""
        out = Path(out).expanduser()
        if out.suffix == ".parquet":
            _write_parquet(self, out)
            return out
        base = out.with_suffix("") if out.suffix in (".npy", ".csv", ".json") else out
        buffer = io.BytesIO()
        np.save(buffer, self.vectors.astype(np.float32), allow_pickle=False)
        rows = io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(zip(self.paths, self.labels))
        npy, table = buffer.getvalue(), rows.getvalue().encode()
        _write_file(base.with_suffix(".npy"), npy)
        _write_file(base.with_suffix(".csv"), table)
        # last, with the digests of the other two: a kill between the three files (re-embedding with another model
        # over an old set) leaves files that load refuses, never new vectors read with the old header's model
        meta = {**self.meta(), "sha256": {"npy": hashlib.sha256(npy).hexdigest(),
                                          "csv": hashlib.sha256(table).hexdigest()}}
        _write_file(base.with_suffix(".json"), json.dumps(meta, indent=1).encode())
        return base.with_suffix(".npy")

    @classmethod
    def load(cls, path: str | Path) -> "Embeddings":
        """What `save` wrote (any of its three names, or the .parquet); refuses files that do not agree."""
        path = Path(path).expanduser()
        if path.suffix == ".parquet":
            return _read_parquet(path)
        base = path.with_suffix("") if path.suffix in (".npy", ".csv", ".json") else path
        try:
            meta = json.loads(base.with_suffix(".json").read_text())
            npy, table = base.with_suffix(".npy").read_bytes(), base.with_suffix(".csv").read_bytes()
            vectors = np.load(io.BytesIO(npy), allow_pickle=False)
            rows = list(csv.reader(io.StringIO(table.decode("utf-8"))))[1:]
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the embeddings {base}.npy/.csv/.json: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(f"{base}.json is not an imgclass embeddings file")
        digests = meta.get("sha256") or {}
        if digests and (digests.get("npy") != hashlib.sha256(npy).hexdigest()
                        or digests.get("csv") != hashlib.sha256(table).hexdigest()):
            raise UserError(f"{base}.npy/.csv are not the files {base}.json was written with (an embed stopped "
                            f"half-way over an older set?): embed again")
        return _checked(cls, vectors, [r[0] for r in rows], [r[1] if len(r) > 1 else "" for r in rows], meta, base)


def _checked(cls, vectors: np.ndarray, paths: list, labels: list, meta: dict, name: Path) -> "Embeddings":
    """Embeddings from a file's parts, once they agree (every format's reader passes here)."""
    if vectors.ndim != 2 or vectors.dtype != np.float32 or len(vectors) != len(paths) or meta.get("n") != len(paths):
        raise UserError(f"{name}: the vectors ({vectors.shape}), the rows ({len(paths)}) and the header "
                        f"({meta.get('n')}) do not agree; embed again")
    if not all(isinstance(p, str) for p in paths) or not all(isinstance(label, str) for label in labels):
        raise UserError(f"{name}: paths and labels must be text; embed again")
    outside = next((p for p in paths if PurePosixPath(p).is_absolute() or ".." in PurePosixPath(p).parts), None)
    if outside is not None:  # the galleries read these files: they must stay inside the folder embedded
        raise UserError(f"{name} names '{outside}', outside the folder it describes: refused")
    return cls(vectors, tuple(paths), tuple(labels), str(meta.get("root", "")), str(meta.get("source", "")),
               bool(meta.get("pretrained")), dict(meta.get("preprocessing") or {}),
               tuple(tuple(s) for s in meta.get("skipped", [])))


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def _pyarrow():
    require("pyarrow.parquet", "parquet", "Parquet output (or --out NAME.npy for .npy + .csv)")
    import pyarrow
    return pyarrow


def _write_parquet(emb: Embeddings, out: Path) -> None:
    pa = _pyarrow()
    table = pa.table({"path": list(emb.paths), "label": list(emb.labels),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.vectors.reshape(-1)),
                                                                     emb.vectors.shape[1])})
    table = table.replace_schema_metadata({FORMAT: json.dumps(emb.meta())})
    sink = io.BytesIO()
    pa.parquet.write_table(table, sink)
    _write_file(out, sink.getvalue())


def _read_parquet(path: Path) -> Embeddings:
    pa = _pyarrow()
    try:
        table = pa.parquet.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(FORMAT.encode(), b"{}"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(f"{path} is not an imgclass embeddings file")
        flat = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32)
        dim = int(meta.get("dim", 0))
        if dim < 1 or flat.size != dim * table.num_rows:
            raise UserError(f"{path}: {flat.size} numbers are not {table.num_rows} vectors of {dim}; embed again")
        paths, labels = table.column("path").to_pylist(), table.column("label").to_pylist()
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        raise UserError(f"cannot read the embeddings {path}: {exc}") from None
    # the same checks as the .npy files' (issue 40, item 6: the Parquet reader skipped them)
    return _checked(Embeddings, flat.reshape(table.num_rows, dim), paths, labels, meta, path)


def _rows(data: str | Path, labelled: bool) -> tuple[Path, list[tuple[str, int]], list[str]]:
    """(root, (relative path, label index) per image, label names) of a labelled data folder (every split, as
    `imgclass train` finds it); a folder without labels gives its images under label ""."""
    root = Path(data).expanduser()
    if labelled:
        try:
            found = find_images(root)
            return found.root, [(rel, label) for rel, label, _ in found.items], found.classes
        except UserError:
            pass
    if not root.is_dir():
        raise UserError(f"not a folder of images: {root}")
    files = expand_inputs([root])
    return root, [(p.relative_to(root).as_posix(), 0) for p in files], [""]


def embed(model: str | Path | Predictor | EmbeddingModel, data: str | Path, out: str | Path | None = None,
          pretrained: bool = False, device: str = "auto", cache: bool = True, cache_dir: str | Path | None = None,
          labelled: bool = True, on_progress: Callable[[int], None] | None = None) -> Embeddings:
    """One vector per image of a data folder (as `train` finds it: every split, with labels; any folder of images
    without them), decoded once through the cache; written to out when given."""
    em = model if isinstance(model, EmbeddingModel) else embedding_model(model, pretrained, device)
    root, rows, names = _rows(data, labelled)
    result = embed_rows(em, root, rows, names, cache, cache_dir, on_progress)
    if out is not None:
        result.save(out)
    return result


def embed_rows(em: EmbeddingModel, root: Path, rows: list[tuple[str, int]], names: list[str], cache: bool = True,
               cache_dir: str | Path | None = None, on_progress: Callable[[int], None] | None = None) -> Embeddings:
    """Embeddings of (relative path, label index) rows under root, decoded through the cache (or in memory)."""
    if cache:
        images, _ = load_cached(root, rows, em.pre, Path(cache_dir).expanduser() if cache_dir else None,
                                on_progress=on_progress)
    else:
        images = load_split(root, rows, em.pre, on_progress=on_progress)
    vectors = compute_features(em.net, images.images, em.pre, 64, em.device).numpy().astype(np.float32)
    return Embeddings(vectors, tuple(images.paths), tuple(names[i] for i in images.labels.tolist()), str(root),
                      em.source, em.pretrained, em.pre.to_dict(), tuple(tuple(b) for b in images.bad))


def embed_files(em: EmbeddingModel, sources: list[str | Path | bytes], chunk: int = 256
                ) -> tuple[np.ndarray, list[str | None]]:
    """Vectors of single inputs (query images: files or bytes), decoded like every command decodes them, `chunk` at
    a time (memory stays bounded for a folder of queries); rows of unreadable inputs are NaN, with their reason."""
    errors: list[str | None] = []
    parts = []
    for start in range(0, len(sources), chunk):
        arrays, good = [], []
        for i, source in enumerate(sources[start:start + chunk], start):
            try:
                arrays.append(em.pre.load(source))
                errors.append(None)
                good.append(i)
            except Exception as exc:  # noqa: BLE001 - one unreadable query never stops the others
                errors.append(str(exc) or type(exc).__name__)
        if arrays:
            parts.append((good, compute_features(em.net, to_nchw(np.stack(arrays)), em.pre, 64, em.device).numpy()))
    dim = parts[0][1].shape[1] if parts else 0
    vectors = np.full((len(sources), dim), np.nan, dtype=np.float32)
    for good, feats in parts:
        vectors[good] = feats
    return vectors, errors


def model_of(emb: Embeddings, device: str = "auto") -> EmbeddingModel:
    """The model that computed an embeddings file (to embed queries the same way). The file names it, so the
    model loaded is said in a line (a model file loads as any does: safetensors, its header checked and bounded)."""
    log.info(f"embedding the queries with {emb.source}, the model that computed these embeddings (their file says)")
    return embedding_model(emb.source, emb.pretrained, device)
