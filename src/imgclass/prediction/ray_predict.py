"""`imgclass predict MODEL SOURCE... --ray [--address ADDR] [--ray-workers N] [--out predictions.parquet]`:
scoring a large collection on Ray Data (the `ray` extra), with the same decode, preprocessing and engine as
`predict` in one process.

The files are listed as predict lists them (folders recursively, images only; glob patterns), or handed to Ray as
they are when they name another filesystem Ray reads (s3://, gs://, ...). Ray Data reads their bytes
(`read_binary_files`) and `map_batches` sends batches to a pool of actors; each actor loads the model file once
(a Predictor, its runtime chosen as predict chooses it) and answers each batch with `Predictor.predict` on the
bytes, so a file that does not decode fails its own row ({"image", "error"}), never the job. Without --address
a local Ray is started on this machine (and stopped at the end); with one the job joins that cluster.

The answers come back in the order of the inputs, exactly as `predict` would give them, or are written to a
Parquet file (one row per image: image, label, probability, top_k and, for several tags, labels as JSON; error),
streamed batch by batch into a temporary file renamed into place at the end.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..extras import require
from ..files import staged_file
from .predictor import expand_inputs

RAY_BATCH = 32  # images per actor call: enough to batch the model (Lite0's best is 8-16 on a CPU) and decoding


class Scorer:
    """A Ray actor: one Predictor for its life, running the engine the driver chose (runtime.load_chosen: not
    timed again, and for an export no PyTorch model built); a batch of file bytes in, one answer per file out."""

    def __init__(self, model: str, kind: str, with_model: bool, top_k: int, level: str, max_pixels: int | None,
                 reject: bool | float | None, threads: int):
        import torch
        torch.set_num_threads(threads)
        from .runtime import load_chosen
        self.predictor = load_chosen(model, kind, max_pixels, with_model)
        self.top_k, self.level, self.reject = top_k, level, reject

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        answers = self.predictor.predict([bytes(b) for b in batch["bytes"]], self.top_k, level=self.level,
                                         reject=self.reject)
        return {"path": list(batch["path"]), "answer": [json.dumps({**a, "image": p})
                                                        for a, p in zip(answers, batch["path"])]}


def _paths(inputs: list[str]) -> list[str]:
    """Local inputs listed as predict lists them; remote URLs (s3://...) handed to Ray as they are."""
    remote = [str(i) for i in inputs if "://" in str(i)]
    local = [i for i in inputs if "://" not in str(i)]
    return [str(p) for p in (expand_inputs(local) if local else [])] + remote


def ray_predict(model: str | Path, inputs: list[str], top_k: int = 3, level: str = "fine", runtime: str = "auto",
                precision: str = "auto", max_pixels: int | None = None, reject: bool | float | None = None,
                address: str | None = None, workers: int | None = None, out: str | Path | None = None
                ) -> list[dict[str, Any]] | Path:
    """The answers in input order (as predict's), or, with out (.parquet), the file written."""
    if out is not None and Path(out).suffix != ".parquet":
        raise UserError("--out with --ray writes Parquet: name a .parquet file")
    ray = require("ray", "ray", "predict --ray")
    require("ray.data", "ray", "predict --ray")
    from ..modelfile import resolve_model_path
    model_path = str(resolve_model_path(model) if Path(model).suffix not in (".onnx", ".xml") else Path(model))
    paths = _paths([str(i) for i in inputs])
    # The runtime chosen once here, for a job of this size: its exports (ONNX, OpenVINO, int8) are made into this
    # machine's runtime cache before the actors start, which load the chosen one (made on their own node if absent)
    from .predictor import Predictor
    from .runtime import chosen_kind, choose_runtime
    predictor = Predictor.load(model_path, "cpu", max_pixels)
    kind = chosen_kind(choose_runtime(predictor, runtime, precision, len(paths)))
    rejection = predictor.rejection(reject)  # a bad --reject: refused here, before Ray starts
    with_model = rejection is not None and rejection.needs_features
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 **({} if address else {"num_cpus": os.cpu_count() or 1}))
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = workers or max(1, cpus // 2)  # two threads each: measured best for Lite0 (RESULTS.md)
        threads = max(1, cpus // workers) if not address else 2
        # Reservations, not limits: each actor runs `threads` threads but reserves 3/4 of them, and the reads a
        # quarter of a CPU, so that reading can be scheduled beside a pool that fills the machine (with whole CPUs
        # reserved, 2 actors on 2 CPUs left the read tasks unscheduled and the job hung).
        dataset = ray.data.read_binary_files(paths, include_paths=True, num_cpus=0.25).map_batches(
            Scorer, fn_constructor_kwargs=dict(model=model_path, kind=kind, with_model=with_model, top_k=top_k,
                                               level=level, max_pixels=max_pixels, reject=reject, threads=threads),
            batch_size=RAY_BATCH, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=0.75 * threads,
            batch_format="numpy")
        if out is not None:
            return _write_parquet(dataset, Path(out), paths)
        answers = {row["path"]: json.loads(row["answer"]) for row in dataset.iter_rows()}
    finally:
        if started_here:
            ray.shutdown()
    return [answers[_ray_path(p)] for p in paths]


def _ray_path(path: str) -> str:
    """The path as Ray Data reports it (local files without a scheme, made absolute)."""
    return path if "://" in path else str(Path(path).resolve())


def _write_parquet(dataset, out: Path, paths: list[str]) -> Path:
    """Rows in the order Ray finishes them (a million rows are never held at once), one per image."""
    pa = require("pyarrow.parquet", "ray", "predict --ray --out NAME.parquet")
    import pyarrow
    schema = pyarrow.schema([("image", pyarrow.string()), ("label", pyarrow.string()),
                             ("probability", pyarrow.float64()), ("answer", pyarrow.string()),
                             ("error", pyarrow.string())])
    with staged_file(out) as tmp, pa.ParquetWriter(str(tmp), schema) as writer:
        for batch in dataset.iter_batches(batch_size=1024, batch_format="numpy"):
            rows = [json.loads(a) for a in batch["answer"]]
            best = [(r.get("top_k") or [{}])[0] for r in rows]
            writer.write_table(pyarrow.table({
                "image": [r["image"] for r in rows], "label": [b.get("label") for b in best],
                "probability": [b.get("probability") for b in best],
                "answer": [json.dumps({k: v for k, v in r.items() if k not in ("image", "error")}) for r in rows],
                "error": [r.get("error") for r in rows]}, schema=schema))
    return out
