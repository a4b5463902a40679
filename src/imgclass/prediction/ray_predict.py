"""Scoring a large collection on Ray Data (the `ray` extra), with the same decode, preprocessing and engine as in
one process:

    imgclass predict MODEL SOURCE... --ray [--address ADDR] [--ray-workers N] [--out predictions.parquet]
    imgclass submit MODEL TEST_DIR --ray [--address ADDR] [--ray-workers N]

The files are listed as predict lists them (folders recursively, images only; glob patterns), or handed to Ray as
they are when they name another filesystem Ray reads (s3://, gs://, ...). Ray Data reads their bytes
(`read_binary_files`) and `map_batches` sends batches to a pool of actors (Scorer). The driver chooses the runtime
once, for a job of this size (its exports made into this machine's runtime cache); each actor loads that engine
once (runtime.load_chosen: the export alone, no PyTorch model, nothing timed again) and returns each batch's
probabilities with `Predictor.predict_proba`, so a file that does not decode fails its own row, never the job.
The driver turns the probabilities into answers with the same `Predictor.answer` that predict uses, or, for
submit, into the same rows. Without --address a local Ray is started on this machine (and stopped at the end);
with one the job joins that cluster (the model file's path must be readable there too).

WebDataset-style .tar shards (data/shards.py) are read by one Ray task per shard, which streams the shard's images
to the actors RAY_BATCH at a time (a member that could not be read arrives as its error, and the actors score the
rest with `Predictor.predict_read`); the answers come back in predict's order, shard by shard, member by member.

The answers come back in the order of the inputs, exactly as `predict` would give them, or are written to a
Parquet file (one row per image: image, label, probability, the whole answer as JSON, error), streamed batch by
batch into a temporary file renamed into place at the end.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..core import log
from ..core.errors import UserError
from ..core.extras import require
from ..core.files import staged_file
from ..inference.predictor import Predictor, expand_inputs

RAY_BATCH = 32  # images per actor call: enough to batch the model (Lite0's best is 8-16 on a CPU) and decoding
REACH_SECONDS = 10  # how long a cluster's address may take to accept a connection before the job is refused


@dataclass(frozen=True)
class RayJob:
    """Where a command scores on Ray: the cluster at address (None: a local Ray, started and stopped), with this
    many actors (None: one per two of its CPUs)."""
    address: str | None = None
    workers: int | None = None


class Scorer:
    """A Ray actor: one Predictor for its life, running the engine the driver chose (runtime.load_chosen); a batch
    of file bytes in, their probabilities (NaN rows and an error for files that do not decode) out."""

    def __init__(self, model: str, kind: str, with_features: bool, max_pixels: int | None, threads: int):
        import torch
        torch.set_num_threads(threads)
        from ..inference.runtime import load_chosen
        self.predictor = load_chosen(model, kind, max_pixels, with_model=with_features)
        self.with_features = with_features

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        # a batch read from shards says which of its members could not be read ("error"), and their order
        given = batch["error"] if "error" in batch else [""] * len(batch["path"])
        items = [str(e) if e else bytes(b) for b, e in zip(batch["bytes"], given)]
        feats: list[np.ndarray] | None = [] if self.with_features else None
        probs, errors = self.predictor.predict_read(items, feats, max(1, len(items)))
        out = {"path": batch["path"], "probs": probs, "error": np.array([e or "" for e in errors], dtype=object)}
        if "order" in batch:
            out["order"] = batch["order"]
        if feats is not None:
            out["features"] = feats[0]
        return out


def read_shards(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """A Ray task's work for shards: the images of its shards, RAY_BATCH at a time (data/shards.py's
    bounded_chunks), each with its bytes (or why it
    cannot be read) and its place in the job (shard index x 2^32 + member index), read as a stream."""
    from ..data.shards import bounded_chunks, shard_images
    rows = ((name, item if isinstance(item, bytes) else b"", "" if isinstance(item, bytes) else item,
             int(index) * 2**32 + k)
            for shard, index in zip(batch["shard"], batch["index"])
            for k, (name, item) in enumerate(shard_images(str(shard))))
    # bytes or why, of each row: 32 members of 64 MiB would be 2 GiB a task
    for chunk in bounded_chunks(rows, RAY_BATCH, item=lambda row: row[1] or row[2]):
        yield _columns(chunk)


def _columns(rows: list[tuple[str, bytes, str, int]]) -> dict[str, np.ndarray]:
    names, data, errors, order = zip(*rows)
    return {"path": np.array(names, dtype=object), "bytes": np.array(data, dtype=object),
            "error": np.array(errors, dtype=object), "order": np.array(order, dtype=np.int64)}


def ray_paths(inputs: list[str]) -> list[str]:
    """Local inputs listed as predict lists them; remote URLs (s3://...) handed to Ray as they are."""
    remote = [str(i) for i in inputs if "://" in str(i)]
    local = [i for i in inputs if "://" not in str(i)]
    return [str(p) for p in (expand_inputs(local) if local else [])] + remote


def _ray_forms(path: str) -> tuple[str, ...]:
    """The forms in which Ray Data may report a path: a local file made absolute; a URL as given or without its
    scheme (pyarrow's filesystems name s3://bucket/key as bucket/key)."""
    return (path, path.split("://", 1)[1]) if "://" in path else (str(Path(path).resolve()),)


def scored_batches(predictor: Predictor, paths: list[str], with_features: bool = False, address: str | None = None,
                   workers: int | None = None, shards: bool = False
                   ) -> Iterator[tuple[list[str], np.ndarray, list[str | None], Any, Any]]:
    """(paths as given, probabilities, errors, features or None, order or None) per batch, in the order Ray
    finishes them, scored by actors running the predictor's engine (the runtime the caller chose and `use`d).
    shards: paths are .tar shards (data/shards.py), each read as a stream by one Ray task; the images are named
    tar://MEMBER::SHARD, and order places each in the job (shard, then member)."""
    if predictor.path is None:
        raise UserError("--ray loads the model file in each worker: give a run folder or model file")
    if workers is not None and workers < 1:
        raise UserError("--ray-workers must be at least 1")
    ray = require("ray", "ray", "--ray")
    require("ray.data", "ray", "--ray")
    from ..inference.runtime import chosen_kind
    kind = chosen_kind(predictor.engine)
    given = {form: p for p in paths for form in _ray_forms(p)}
    started_here = not ray.is_initialized()
    if started_here:
        _check_reachable(address)
        if address is None:
            log.warning(PRIVATE_RAY_NOTE)
        # "local": a Ray of this job's own. With address=None Ray would attach to RAY_ADDRESS, to a Ray already
        # running on this machine, or to the cluster a stale ray_current_cluster file names (and then fail on
        # num_cpus); "local" alone starts a new one whatever the environment says.
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, configure_logging=False,
                 **({} if address else {"num_cpus": os.cpu_count() or 1}))
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = workers or max(1, cpus // 2)  # two threads each: measured best for Lite0 (RESULTS.md)
        threads = max(1, cpus // workers) if not address else 2
        # Reservations, not limits: each actor runs `threads` threads but reserves 3/4 of them, and the reads a
        # quarter of a CPU, so that reading can be scheduled beside a pool that fills the machine (with whole CPUs
        # reserved, 2 actors on 2 CPUs left the read tasks unscheduled and the job hung).
        if shards:  # one task per shard, streaming it; a shard's images go to the actors RAY_BATCH at a time
            source = ray.data.from_items([{"shard": s, "index": i} for i, s in enumerate(paths)],
                                         override_num_blocks=len(paths)).map_batches(
                read_shards, batch_size=1, num_cpus=0.25, batch_format="numpy")
        else:
            source = ray.data.read_binary_files(paths, include_paths=True, num_cpus=0.25)
        dataset = source.map_batches(
            Scorer, fn_constructor_kwargs=dict(model=str(predictor.path), kind=kind, with_features=with_features,
                                               max_pixels=predictor.pre.max_pixels, threads=threads),
            batch_size=RAY_BATCH, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=0.75 * threads,
            batch_format="numpy")
        for batch in dataset.iter_batches(batch_size=1024, batch_format="numpy"):
            yield ([given.get(str(p), str(p)) for p in batch["path"]], np.asarray(batch["probs"], np.float32),
                   [e or None for e in batch["error"]], batch.get("features"), batch.get("order"))
    finally:
        if started_here:
            ray.shutdown()


# Ray 2.60 binds its own services (GCS, raylet, object manager) to every network interface, even when told that the
# node's address is 127.0.0.1 (it resolves loopback to the machine's address), and they take no password: said once
# at the start of every job that starts its own Ray, and in docs/security.md.
PRIVATE_RAY_NOTE = ("--ray without --address starts a private Ray on this machine for this job; Ray's own services "
                    "listen on this machine's network interfaces, unauthenticated, until the job ends")


def _check_reachable(address: str | None) -> None:
    """A cluster address that nothing answers at is refused in seconds: Ray itself retries for minutes."""
    if address is None or address in ("auto", "local"):
        return
    import socket
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address must be HOST:PORT (or ray://HOST:PORT, or auto), not {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_SECONDS).close()
    except OSError as exc:
        raise UserError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc} (is `ray start --head` "
                        f"running there, and is the port open?)") from None


def ray_predict_proba(predictor: Predictor, paths: list[str], features: list | None = None,
                      address: str | None = None, workers: int | None = None
                      ) -> tuple[np.ndarray, list[str | None]]:
    """Predictor.predict_proba on Ray: probabilities (NaN rows for unreadable files) and errors, in input order."""
    index = {p: i for i, p in enumerate(paths)}
    probs = np.full((len(paths), len(predictor.classes)), np.nan, np.float32)
    errors: list[str | None] = [None] * len(paths)
    feats = None
    for names, batch_probs, batch_errors, batch_feats, _ in scored_batches(predictor, paths, features is not None,
                                                                           address, workers):
        rows = [index[n] for n in names]
        probs[rows] = batch_probs
        for row, error in zip(rows, batch_errors):
            errors[row] = error
        if batch_feats is not None:
            if feats is None:
                feats = np.full((len(paths), batch_feats.shape[1]), np.nan, np.float32)
            feats[rows] = batch_feats
    if features is not None:
        features.append(feats if feats is not None else np.full((len(paths), 0), np.nan, np.float32))
    return probs, errors


def ray_predict(model: str | Path, inputs: list[str], top_k: int | None = None, level: str = "fine", runtime: str = "auto",
                precision: str = "auto", max_pixels: int | None = None, reject: bool | float | None = None,
                address: str | None = None, workers: int | None = None, out: str | Path | None = None
                ) -> list[dict[str, Any]] | Path:
    """The answers in input order (as predict's), or, with out (.parquet), the file written."""
    if out is not None and Path(out).suffix != ".parquet":
        raise UserError("--out with --ray writes Parquet: name a .parquet file")
    require("ray", "ray", "predict --ray")
    from ..inference.runtime import choose_runtime
    predictor = Predictor.load(model, "cpu", max_pixels)
    top_k, rejection = predictor.check_request(top_k, level, reject)  # refused here, before Ray starts
    from ..data.shards import shards_of
    shards = shards_of(list(inputs))
    paths = shards or ray_paths([str(i) for i in inputs])
    # shards: a job of uncounted images, chosen for as for a long one (as predict does)
    predictor.use(choose_runtime(predictor, runtime, precision, None if shards else len(paths)))
    if out is not None:
        return _write_parquet(predictor, paths, top_k, level, reject, Path(out), address, workers, bool(shards))
    if shards:
        return _shard_answers(predictor, paths, top_k, level, reject, address, workers)
    feats: list | None = [] if predictor.needs_features(reject) else None
    probs, errors = ray_predict_proba(predictor, paths, feats, address, workers)
    return predictor.answer(paths, probs, errors, top_k, level, rejection, feats[0] if feats else None)


def _shard_answers(predictor: Predictor, shards: list[str], top_k: int, level: str, reject: bool | float | None,
                   address: str | None, workers: int | None) -> list[dict[str, Any]]:
    """The shards' answers in the order predict gives them (shard by shard, member by member)."""
    rejection = predictor.rejection(reject)
    placed = []
    for names, probs, errors, feats, order in scored_batches(predictor, shards, predictor.needs_features(reject),
                                                             address, workers, shards=True):
        placed += zip(order.tolist(), predictor.answer(names, probs, errors, top_k, level, rejection, feats))
    return [answer for _, answer in sorted(placed, key=lambda pair: pair[0])]


def _write_parquet(predictor: Predictor, paths: list[str], top_k: int, level: str, reject: bool | float | None,
                   out: Path, address: str | None, workers: int | None, shards: bool = False) -> Path:
    """Rows in the order Ray finishes them (a million rows are never held at once), one per image."""
    pa = require("pyarrow.parquet", "ray", "predict --ray --out NAME.parquet")
    import pyarrow
    schema = pyarrow.schema([("image", pyarrow.string()), ("label", pyarrow.string()),
                             ("probability", pyarrow.float64()), ("answer", pyarrow.string()),
                             ("error", pyarrow.string())])
    rejection = predictor.rejection(reject)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(out) as tmp, pa.ParquetWriter(str(tmp), schema) as writer:
        for names, probs, errors, feats, _ in scored_batches(predictor, paths, predictor.needs_features(reject),
                                                             address, workers, shards):
            rows = predictor.answer(names, probs, errors, top_k, level, rejection, feats)
            said = rows.summary_rows()  # (image, what the answer says, its probability or number, the rest)
            writer.write_table(pyarrow.table({
                "image": [r["image"] for r in rows], "label": [s[1] for s in said],
                "probability": [s[2] for s in said],
                "answer": [json.dumps({k: v for k, v in r.items() if k not in ("image", "error")}) for r in rows],
                "error": [r.get("error") for r in rows]}, schema=schema))
    return out
