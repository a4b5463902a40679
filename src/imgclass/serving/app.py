"""The classification service: an upload page, JSON prediction endpoints, health, info,
Prometheus metrics and OpenAPI docs.

Safe by default, every limit below a named default here and a `serve` option:
- listens on 127.0.0.1 (set by the CLI); uvicorn caps connections with a request in progress
  (LIMITS.connections -> 503) and closes idle keep-alive connections; a request head must be complete within
  LIMITS.header_seconds of connecting, and connections still waiting for one neither count against that cap
  nor number more than LIMITS.waiting_connections (protocol.py: slow-loris sockets lock nobody out);
- uploads over --max-upload-mb are refused from their Content-Length, or as soon as a chunked body
  passes the limit (JSON 413); a body that trickles in slower than LIMITS.body_seconds gets a JSON 408;
- at most --max-batch images a request; a batch is decoded and scored PREDICT_CHUNK images at a time;
- images whose header claims more than SERVE_MAX_PIXELS are refused before decoding (a model file
  can lower that limit, never raise it);
- at most --max-concurrent requests decode at once (a semaphore); decoded images wait in a bounded queue
  (--max-queue; full -> JSON 503 with Retry-After) and are scored together in dynamic batches (batcher.py:
  --max-batch-size images, or whatever came within --max-batch-delay-ms); one thread runs the model, with
  torch's intra-op threads sized to this process's share of the cores;
- only the Host names it is reached by are answered, cross-site POSTs are refused unless --cors allows
  their origin, and an API key (IMGCLASS_API_KEY or --api-key-file, never a command-line value, which `ps`
  shows) guards every path but the page and /health (guard.py); CORS is off unless origins are given.
The runtime (ONNX Runtime, PyTorch float32 or bf16) is chosen as prediction.runtime says and shown by /info.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from ..core import log
from ..data.decode import ImageDecodeError
from ..data.preprocess import to_nchw
from ..core.errors import UserError
from ..models.reject import Rejection
from ..inference.predictor import Predictor
from ..core.version import __version__
from .batcher import BATCHING, Batcher, Batching, QueueFull
from .guard import Guard, allowed_host_names
from .limits import LIMITS
from .settings import (MAX_BATCH, SERVE_MAX_DECODE_MB, SERVE_MAX_PIXELS, ServeSettings,
                       default_concurrency)


MIN_KEY_LENGTH = 8  # an API key's characters at least, from a file or IMGCLASS_API_KEY
EXPLAIN_WAIT_SECONDS = 30.0  # a heatmap waits this long at most for the one before it (then 503)
PREDICT_CHUNK = 16  # images of one request decoded at a time, so a request's memory is bounded by a chunk


class _Refused(Exception):
    """The body broke a limit while streaming in: too large (413) or too slow (408)."""

    def __init__(self, status: int):
        self.status = status


def _refusal(exc: BaseException) -> _Refused | None:
    """Our refusal, also when Starlette's middleware re-raised it inside an exception group."""
    if isinstance(exc, _Refused):
        return exc
    return next(filter(None, (_refusal(e) for e in getattr(exc, "exceptions", ()))), None)


class UploadLimit:
    """ASGI middleware: a JSON 413 before the body is read when it is (or becomes) larger than the limit,
    and a JSON 408 when the body has not all arrived within body_seconds."""

    def __init__(self, app, max_bytes: int, body_seconds: float = LIMITS.body_seconds):
        self.app, self.max_bytes, self.body_seconds = app, max_bytes, body_seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _refuse(413, self.max_bytes, send)
        seen, started, complete = 0, False, False
        deadline = asyncio.get_running_loop().time() + self.body_seconds

        async def limited():
            nonlocal seen, complete
            if complete:  # after the body Starlette only listens for a disconnect: no limit on that
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                raise _Refused(408) from None
            seen += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if seen > self.max_bytes:
                raise _Refused(413)
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            return await self.app(scope, limited, tracked)
        except BaseException as exc:  # noqa: BLE001 - only our limits are answered here; the rest re-raised
            refused = _refusal(exc)
            if refused is None or started:
                raise
            return await _refuse(refused.status, self.max_bytes, send)


async def _refuse(status: int, limit: int, send) -> None:
    detail = (f"upload larger than {limit / (1024 * 1024):g} MB" if status == 413 else
              "the request body arrived too slowly")
    response = JSONResponse({"detail": detail}, status_code=status)
    await response({"type": "http"}, None, send)


async def read_images(request: Request, many: bool, max_batch: int) -> list[bytes]:
    """The image bytes of a request: multipart file(s), or JSON base64; every malformed body a 4xx."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        files = [v for k, v in form.multi_items() if hasattr(v, "read") and k in ("file", "files")]
        if len(files) > max_batch:
            raise HTTPException(413, f"at most {max_batch} images a request (--max-batch)")
        if not files:
            raise HTTPException(400, "no file in the form (field 'file'" + (" or 'files'" if many else "") + ")")
        return [await f.read() for f in files]
    if ctype.startswith("application/json"):
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python recurses
            raise HTTPException(400, "invalid JSON") from None
        items = body.get("images") if many and isinstance(body, dict) else None
        items = items if items is not None else [body.get("image") if isinstance(body, dict) else None]
        if not isinstance(items, list):
            raise HTTPException(400, '"images" must be a list of base64 strings')
        if len(items) > max_batch:
            raise HTTPException(413, f"at most {max_batch} images a request (--max-batch)")
        out = []
        for item in items:
            if not isinstance(item, str) or not item:
                raise HTTPException(400, 'JSON needs {"image": "<base64>"}' + (' or {"images": [...]}' if many else ""))
            try:
                out.append(base64.b64decode(item.split(",", 1)[-1], validate=True))
            except (binascii.Error, ValueError):
                raise HTTPException(400, "image is not valid base64") from None
        return out
    raise HTTPException(415, "send multipart/form-data with a file, or application/json with base64")


def _observe(app: FastAPI, requests: Counter, latency: Histogram) -> None:
    """Middleware: request counts and latency labelled by route template (not the raw path: random 404 paths must
    not grow /metrics). The Host, Origin and API-key checks come before it (guard.py)."""
    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        endpoint = getattr(request.scope.get("route"), "path", None) or "unmatched"
        requests.labels(endpoint, str(response.status_code)).inc()
        latency.labels(endpoint).observe(time.perf_counter() - started)
        return response


def decode_upload(predictor: Predictor, blob: bytes, max_decode_bytes: int = SERVE_MAX_DECODE_MB << 20) -> Any:
    """The image at the model's size (H x W x 3 uint8), or {"error": reason, "status": 400|415}: only
    data/defaults.py's IMAGE_FORMATS are opened (as everywhere), and an image whose decode would take more than
    max_decode_bytes is refused unread."""
    if not blob:
        return {"error": "empty file", "status": 400}
    try:
        return predictor.pre.load(blob, max_bytes=max_decode_bytes)
    except ImageDecodeError as exc:
        reason = str(exc)
        return {"error": reason, "status": 415 if reason.startswith(("not an image", "cannot open")) else 400}
    except Exception as exc:  # noqa: BLE001 - an odd decoder failure fails this item only, not the batch
        return {"error": f"cannot decode this image ({type(exc).__name__})", "status": 400}


def _explain_route(app: FastAPI, predictor: Predictor, slots: asyncio.Semaphore, slot_seconds: float,
                   model_name: str, decode: Callable[[bytes], Any]) -> None:
    """POST /explain: the heatmap of the top class (or ?label=NAME: a class, or a tag; ?tag=NAME says the same) over
    one image (needs the PyTorch model: gradients). Heatmaps run one at a time on their own copy of the model
    (prediction.explain.HeatmapService): concurrent requests and the batcher never pass through each other's hooks.
    The turn is waited for in the event loop, like a decoding slot (503 past slot_seconds)."""
    from ..prediction.explain import HeatmapService
    heatmaps = HeatmapService(predictor, wait_seconds=slot_seconds)
    turn = asyncio.Semaphore(1)

    @app.post("/explain", summary="Heatmap of the top class (or ?label=NAME, a class, or ?tag=NAME) over one image "
                                   "(multipart 'file' or JSON base64): a PNG, or with ?format=json {label, "
                                   "probability, image: base64 PNG}")
    async def explain(request: Request, format: str = "png", label: str | None = None,
                      tag: str | None = None) -> Response:
        if label is not None and tag is not None and label != tag:
            raise HTTPException(400, "give ?label= or ?tag=, not two different names")
        label = label if label is not None else tag
        blobs = await read_images(request, False, 1)
        if predictor.model is None:
            raise HTTPException(501, f"heatmaps need the PyTorch model file; this service runs an "
                                     f"{predictor.exported_as} export")
        if label is not None and label not in predictor.classes:
            raise HTTPException(400, f"unknown label '{label[:100]}': the model knows {len(predictor.classes)}")
        from starlette.concurrency import run_in_threadpool

        def run() -> Any:
            decoded = decode(blobs[0])
            return decoded if isinstance(decoded, dict) else heatmaps.png(decoded, label)
        # a heatmap is a forward and a backward pass: it takes a decoding slot too
        async with _slot(turn, slot_seconds, "another heatmap is being drawn"), \
                _slot(slots, slot_seconds, "every decoding slot is taken"):
            result = await run_in_threadpool(run)
        if isinstance(result, dict):
            raise HTTPException(result["status"], result["error"])
        label, probability, png = result
        if format == "json":
            return JSONResponse({"label": label, "probability": probability, "model": model_name,
                                 "image": base64.b64encode(png).decode("ascii")})
        return Response(png, media_type="image/png",
                        headers={"X-Label": quote(label), "X-Probability": f"{probability:.6f}"})


def load_predictor(model: str | Path | Predictor, runtime: str, precision: str, max_pixels: int) -> Predictor:
    """The service's model with its runtime chosen for a long-running service (printed, and shown by /info).
    A Predictor given as it is keeps its engine."""
    if isinstance(model, Predictor):
        return model
    from ..inference.runtime import choose_runtime
    predictor = Predictor.load(Path(model).expanduser(), "cpu", max_pixels)
    predictor.use(choose_runtime(predictor, runtime, precision, images=None))
    return predictor


@contextlib.asynccontextmanager
async def _slot(semaphore: asyncio.Semaphore, seconds: float, what: str):
    """Hold one of the semaphore's slots, waited for in the event loop (no thread is held while waiting, so a crowd
    of waiting uploads cannot starve /health); a JSON 503 with Retry-After when none frees within `seconds`."""
    try:
        await asyncio.wait_for(semaphore.acquire(), seconds)
    except asyncio.TimeoutError:
        raise HTTPException(503, f"the service is busy ({what}); try again", headers={"Retry-After": "1"}) from None
    try:
        yield
    finally:
        semaphore.release()


def _scorer(predictor: Predictor, batcher: Batcher, slots: asyncio.Semaphore, slot_seconds: float,
            max_wait_s: float, decode: Callable[[bytes], Any]):
    """async (blobs, k, rejection) -> one {"top_k"} (with "unknown" and "score" given a rejection, as predict
    --reject answers) or {"error", "status"} per blob: decoded in the thread pool (at most
    `slots` requests at once, each waiting slot_seconds at most), scored in the batcher's shared batches (waited
    for max_wait_s at most: then a JSON 504, and the images still queued are dropped)."""
    from starlette.concurrency import run_in_threadpool
    classes = predictor.classes

    async def score(blobs: list[bytes], k: int, rejection: Rejection | None = None) -> list[dict[str, Any]]:
        async with _slot(slots, slot_seconds, "every decoding slot is taken"):
            decoded = await run_in_threadpool(lambda: [decode(blob) for blob in blobs])
        try:
            futures = batcher.submit([d for d in decoded if not isinstance(d, dict)])
        except QueueFull as exc:
            raise HTTPException(503, f"the service is busy: {exc}; try again", headers={"Retry-After": "1"}) from None
        try:
            rows = iter(await asyncio.wait_for(asyncio.gather(*map(asyncio.wrap_future, futures),
                                                              return_exceptions=True), max_wait_s))
        except asyncio.TimeoutError:
            for future in futures:  # the batcher skips what nobody waits for any more
                future.cancel()
            raise HTTPException(504, f"no answer from the model within {max_wait_s:g} s") from None
        pixels = [d for d in decoded if not isinstance(d, dict)]
        feats = None
        if rejection is not None and rejection.needs_features and pixels:
            # ?reject=true with a k-NN rule: one more backbone pass over these images, in a decoding slot like the
            # decode (outside one, 40 threads could each run it with torch's own threads: past --max-concurrent)
            async with _slot(slots, slot_seconds, "every decoding slot is taken"):
                feats = iter(await run_in_threadpool(lambda: predictor.features(to_nchw(np.stack(pixels))).numpy()))
        out = []
        for item in decoded:
            if isinstance(item, dict):
                out.append(item)
                continue
            row = next(rows)
            feat = next(feats) if feats is not None else None
            if isinstance(row, BaseException):  # the model failed on this batch: a JSON 500 for its requests
                out.append({"error": f"the model failed on this image's batch ({type(row).__name__})", "status": 500})
                continue
            answer = predictor.task.answers(row[None], classes, "fine", k)[0]  # top_k (and tags given)
            if rejection is not None:  # ?reject=true: as predict --reject answers
                answer = rejection.mark([answer], row[None], None if feat is None else feat[None])[0]
            out.append(answer)
        return out
    return score


def create_app(model: str | Path | Predictor, runtime: str = "auto", precision: str = "auto",
               max_upload_mb: float = ServeSettings.max_upload_mb, api_key: str | None = None, cors_origins: list[str] | None = None,
               top_k: int = 5, max_batch: int = MAX_BATCH, max_pixels: int = SERVE_MAX_PIXELS,
               max_concurrent: int | None = None, body_seconds: float = LIMITS.body_seconds,
               batching: Batching = BATCHING, host: str = "127.0.0.1", allowed_hosts: tuple[str, ...] = (),
               slot_seconds: float = LIMITS.slot_seconds, max_decode_mb: float = SERVE_MAX_DECODE_MB) -> FastAPI:
    """The app for one model. api_key falls back to IMGCLASS_API_KEY; max_pixels caps the model file's own
    limit; max_decode_mb bounds one upload's decode (decode_upload); max_concurrent requests decode at once (default: default_concurrency()), each waiting slot_seconds at
    most for its turn (then 503); host (the address it
    listens on) and allowed_hosts are the Host names it answers to besides localhost (guard.py)."""
    api_key = api_key or os.environ.get("IMGCLASS_API_KEY") or None
    if api_key is not None and len(api_key) < MIN_KEY_LENGTH:
        raise UserError(f"the API key must be at least {MIN_KEY_LENGTH} characters (IMGCLASS_API_KEY or --api-key-file)")
    predictor = load_predictor(model, runtime, precision, max_pixels)
    predictor.limit_pixels(max_pixels)
    header = predictor.header
    slots = asyncio.Semaphore(max_concurrent or default_concurrency())
    registry = CollectorRegistry()
    requests = Counter("imgclass_requests", "Requests by endpoint and status", ["endpoint", "status"],
                       registry=registry)
    latency = Histogram("imgclass_request_seconds", "Request latency", ["endpoint"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    batch_sizes = Histogram("imgclass_batch_size", "Images per model call (dynamic batching)", registry=registry,
                            buckets=(1, 2, 4, 8, 16, 32, 64))
    batcher = Batcher(lambda pixels: predictor.probabilities(to_nchw(pixels)).numpy(), batching.max_batch_size,
                      batching.max_delay_ms / 1000, batching.max_queue)
    batcher.on_batch = batch_sizes.observe
    def decode(blob: bytes) -> Any:  # an upload -> the image at the model's size, or its refusal
        return decode_upload(predictor, blob, int(max_decode_mb * 2 ** 20))
    score = _scorer(predictor, batcher, slots, slot_seconds, batching.max_wait_s, decode)
    model_name = header.arch.name
    app = FastAPI(title="imgclass", version=__version__,
                  description=f"Images answered by {model_name} ({header.task.answering(header.classes)})")
    app.state.predictor, app.state.batcher = predictor, batcher
    page = resources.files("imgclass.serving").joinpath("page.html").read_text()
    _observe(app, requests, latency)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 1024 * 1024), body_seconds=body_seconds)
    # outermost (added last): nothing runs for a request from a foreign Host or Origin, or without the key
    app.add_middleware(Guard, api_key=api_key, hosts=allowed_host_names(host, allowed_hosts),
                       cors_origins=cors_origins, refused=lambda status: requests.labels("refused", str(status)).inc())

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def upload_page() -> str:
        return page

    def rejection(reject: bool) -> Rejection | None:
        try:
            return predictor.rejection(reject)
        except UserError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.post("/predict", summary="Classify one image (multipart 'file', or JSON {'image': base64})")
    async def predict(request: Request, k: int = top_k, reject: bool = False) -> dict[str, Any]:
        blobs = await read_images(request, False, max_batch)
        if len(blobs) != 1:
            raise HTTPException(400, "send exactly one image to /predict (use /predict/batch for several)")
        result = (await score(blobs, k, rejection(reject)))[0]
        if "error" in result:
            raise HTTPException(result["status"], result["error"])
        return {**result, "model": model_name}  # top_k (several tags per image: also the tags given, "labels")

    @app.post("/predict/batch", summary="Classify several images (multipart 'files', or JSON {'images': [...]})")
    async def predict_batch(request: Request, k: int = top_k, reject: bool = False) -> dict[str, Any]:
        rule = rejection(reject)
        blobs = await read_images(request, True, max_batch)
        results = []
        for start in range(0, len(blobs), PREDICT_CHUNK):  # decoded pixels of one chunk at a time
            results += await score(blobs[start:start + PREDICT_CHUNK], k, rule)
        return {"results": [{"error": r["error"]} if "error" in r else r for r in results],
                "model": model_name}

    _explain_route(app, predictor, slots, slot_seconds, model_name, decode)
    _info_routes(app, predictor, batcher, registry, model_name)
    return app


def _info_routes(app: FastAPI, predictor: Predictor, batcher: Batcher, registry: CollectorRegistry,
                 model_name: str) -> None:
    """/health, /info and /metrics: coroutines, answered on the event loop itself, so they answer however many
    requests wait for the thread pool or a decoding slot."""
    header = predictor.header

    @app.get("/health")
    async def health() -> JSONResponse:
        if not batcher.alive:  # every prediction would wait for nothing: an orchestrator should restart us
            return JSONResponse({"status": "the batching thread has stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {"model": model_name, "classes": list(header.classes), "input_size": header.img_size,
                "preprocessing": header.preprocessing.to_dict(), "tta": header.tta,
                "version": __version__, "model_version": header.imgclass_version,
                "runtime": predictor.engine.runtime, "precision": predictor.engine.precision,
                "runtime_choice": predictor.runtime_note,
                "reject": header.reject.to_dict() if header.reject is not None else None,  # ?reject=true's rule
                "metrics": {k: v for k, v in header.metrics.items() if isinstance(v, (dict, int, float))}}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def read_api_key(path: str | Path | None) -> str | None:
    """The key from a file (first line, stripped): kept off the command line, where `ps` shows it."""
    if path is None:
        return None
    try:
        key = Path(path).expanduser().read_text().strip().splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError):
        key = ""
    if len(key) < MIN_KEY_LENGTH:
        raise UserError(f"--api-key-file {path}: no key of at least {MIN_KEY_LENGTH} characters on its first line")
    return key


def size_threads(workers: int) -> int:
    """torch intra-op threads for one worker process: its share of the cores. (The model runs in one thread,
    the batcher's; decoding runs beside it in the request threads.)"""
    import torch
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    torch.set_num_threads(threads)
    return threads


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` with several worker processes: serve()'s settings, as JSON in
    IMGCLASS_SERVE_SETTINGS (the API key itself is never put there: its file is, or IMGCLASS_API_KEY)."""
    settings = json.loads(os.environ["IMGCLASS_SERVE_SETTINGS"])
    key = read_api_key(settings.pop("api_key_file"))
    size_threads(settings.pop("workers"))
    settings["batching"] = Batching(**settings["batching"])
    from .protocol import use_limits  # this worker's connections get the deadlines serve() was given
    use_limits(*settings.pop("head_limits"))
    return create_app(api_key=key, **settings)


def serve(model: str | Path, settings: ServeSettings = ServeSettings()) -> None:
    """Run the service for a model until stopped (uvicorn; several worker processes with settings.workers)."""
    import uvicorn
    s = settings
    names = allowed_host_names(s.host, s.allowed_hosts)
    log.info("answering requests whose Host is " + ("anything (--allowed-hosts '*')" if names is None else
                                                     ", ".join(sorted(names)) + " (--allowed-hosts adds names)"))
    app_settings = dict(model=str(model), runtime=s.runtime, precision=s.precision, max_upload_mb=s.max_upload_mb,
                        cors_origins=list(s.cors) or None, max_batch=s.max_batch, max_pixels=s.max_pixels,
                        max_decode_mb=s.max_decode_mb,
                        max_concurrent=s.max_concurrent or default_concurrency(), body_seconds=s.limits.body_seconds,
                        host=s.host, allowed_hosts=list(s.allowed_hosts))
    from .protocol import use_limits
    server = dict(host=s.host, port=s.port, limit_concurrency=s.limits.connections,
                  timeout_keep_alive=s.limits.keep_alive_seconds,
                  http=use_limits(s.limits.header_seconds, s.limits.waiting_connections))
    size_threads(s.workers)
    if s.workers > 1:
        # choose (export, time) once here at a worker's thread count; the workers then find it cached
        load_predictor(model, s.runtime, s.precision, s.max_pixels)
        os.environ["IMGCLASS_SERVE_SETTINGS"] = json.dumps(
            {**app_settings, "workers": s.workers, "api_key_file": str(s.api_key_file) if s.api_key_file else None,
             "batching": asdict(s.batching), "head_limits": [s.limits.header_seconds, s.limits.waiting_connections]})
        uvicorn.run("imgclass.serving.app:app_from_env", factory=True, workers=s.workers, **server)
    else:
        uvicorn.run(create_app(api_key=read_api_key(s.api_key_file), batching=s.batching, **app_settings), **server)
