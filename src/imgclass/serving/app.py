"""The classification service: an upload page, JSON prediction endpoints, health, info,
Prometheus metrics and OpenAPI docs.

Safe by default: listens on 127.0.0.1 (set by the CLI), uploads over --max-upload-mb are refused
from their Content-Length (or as soon as the body passes the limit) before being read whole,
decompression bombs are refused from the image header, CORS is off unless origins are given,
and an optional API key is required in X-API-Key. Endpoints are plain functions, so FastAPI runs
them in its thread pool and one slow client does not block the others.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from .. import __version__
from .runtimes import Runtime, load_runtime


class _TooLarge(Exception):
    """The body grew past the limit while streaming in (a chunked upload has no Content-Length)."""


def _is_too_large(exc: BaseException) -> bool:
    """Our limit, also when Starlette's middleware re-raised it inside an exception group."""
    if isinstance(exc, _TooLarge):
        return True
    return any(_is_too_large(e) for e in getattr(exc, "exceptions", ()))


class UploadLimit:
    """ASGI middleware: a JSON 413 before the body is read when it is (or becomes) larger than the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _too_large(self.max_bytes, send)
        seen, started = 0, False

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge()
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            return await self.app(scope, limited, tracked)
        except BaseException as exc:  # noqa: BLE001 - only our limit is answered here; the rest re-raised
            if not _is_too_large(exc) or started:
                raise
            return await _too_large(self.max_bytes, send)


async def _too_large(limit: int, send) -> None:
    response = JSONResponse({"detail": f"upload larger than {limit // (1024 * 1024)} MB"}, status_code=413)
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


MAX_BATCH = 64    # images per /predict/batch request: more get a JSON 413
PREDICT_CHUNK = 16  # images decoded and scored at a time, so a batch's memory is bounded by a chunk


def create_app(model: str | Path | Runtime, runtime: str = "torch", max_upload_mb: float = 10.0,
               api_key: str | None = None, cors_origins: list[str] | None = None, top_k: int = 5,
               max_batch: int = MAX_BATCH) -> FastAPI:
    engine = model if isinstance(model, Runtime) else load_runtime(model, runtime)
    header = engine.header
    api_key = api_key or os.environ.get("IMGCLASS_API_KEY") or None
    max_bytes = int(max_upload_mb * 1024 * 1024)
    registry = CollectorRegistry()
    requests = Counter("imgclass_requests", "Requests by endpoint and status", ["endpoint", "status"],
                       registry=registry)
    latency = Histogram("imgclass_request_seconds", "Request latency", ["endpoint"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    model_name = header.get("arch", {}).get("name", "model")
    app = FastAPI(title="imgclass", version=__version__,
                  description=f"Image classification with {model_name} ({len(header['classes'])} classes)")
    page = resources.files("imgclass.serving").joinpath("page.html").read_text()

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        if api_key and request.url.path.startswith("/predict"):
            given = request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                response = JSONResponse({"detail": "missing or wrong API key (X-API-Key header)"}, status_code=401)
                path = request.url.path
                requests.labels(path if path in ("/predict", "/predict/batch") else "unmatched", "401").inc()
                return response
        response = await call_next(request)
        # labelled by route template, not the raw path: random 404 paths must not grow /metrics
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        requests.labels(endpoint, str(response.status_code)).inc()
        latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    app.add_middleware(UploadLimit, max_bytes=max_bytes)

    def answer(result: dict[str, Any]) -> dict[str, Any]:
        if "error" in result:
            raise HTTPException(result["status"], result["error"])
        return {"top_k": result["top_k"], "model": model_name}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def upload_page() -> str:
        return page

    @app.post("/predict", summary="Classify one image (multipart 'file', or JSON {'image': base64})")
    async def predict(request: Request, k: int = top_k) -> dict[str, Any]:
        blobs = await read_images(request, False, max_batch)
        if len(blobs) != 1:
            raise HTTPException(400, "send exactly one image to /predict (use /predict/batch for several)")
        from starlette.concurrency import run_in_threadpool
        return answer((await run_in_threadpool(engine.predict, blobs, k))[0])

    @app.post("/predict/batch", summary="Classify several images (multipart 'files', or JSON {'images': [...]})")
    async def predict_batch(request: Request, k: int = top_k) -> dict[str, Any]:
        blobs = await read_images(request, True, max_batch)
        from starlette.concurrency import run_in_threadpool
        results = []
        for start in range(0, len(blobs), PREDICT_CHUNK):  # decoded pixels of one chunk at a time
            results += await run_in_threadpool(engine.predict, blobs[start:start + PREDICT_CHUNK], k)
        return {"results": [{"error": r["error"]} if "error" in r else {"top_k": r["top_k"]} for r in results],
                "model": model_name}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict[str, Any]:
        return {"model": model_name, "classes": header["classes"], "input_size": header["preprocessing"]["img_size"],
                "preprocessing": header["preprocessing"], "tta": header.get("inference", {}).get("tta", "none"),
                "version": __version__, "model_version": header.get("imgclass_version"), "runtime": engine.name,
                "metrics": {k: v for k, v in header.get("metrics", {}).items() if isinstance(v, (dict, int, float))}}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` with several worker processes (settings from the environment)."""
    cors = os.environ.get("IMGCLASS_SERVE_CORS")
    return create_app(os.environ["IMGCLASS_SERVE_MODEL"], os.environ.get("IMGCLASS_SERVE_RUNTIME", "torch"),
                      float(os.environ.get("IMGCLASS_SERVE_MAX_MB", "10")), None,
                      cors.split(",") if cors else None,
                      max_batch=int(os.environ.get("IMGCLASS_SERVE_MAX_BATCH", str(MAX_BATCH))))


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, runtime: str = "torch",
          max_upload_mb: float = 10.0, api_key: str | None = None, cors_origins: list[str] | None = None,
          max_batch: int = MAX_BATCH) -> None:
    import uvicorn
    if api_key:
        os.environ["IMGCLASS_API_KEY"] = api_key
    if workers > 1:
        os.environ.update(IMGCLASS_SERVE_MODEL=str(model), IMGCLASS_SERVE_RUNTIME=runtime,
                          IMGCLASS_SERVE_MAX_MB=str(max_upload_mb), IMGCLASS_SERVE_CORS=",".join(cors_origins or []),
                          IMGCLASS_SERVE_MAX_BATCH=str(max_batch))
        uvicorn.run("imgclass.serving.app:app_from_env", factory=True, host=host, port=port, workers=workers)
    else:
        uvicorn.run(create_app(model, runtime, max_upload_mb, api_key, cors_origins, max_batch=max_batch), host=host,
                    port=port)
