"""`imgclass app [RUNS]`: the workbench, a local web app over a folder of runs (FastAPI, one page without a build
step: static/index.html, app.js, app.css, shipped with the package; nothing is loaded from the internet).

What it serves, all read from the runs' own files (workbench/runs.py names the runs):
- /api/runs, /api/compare: the runs list and compare's table, curves and per-class differences;
- /api/run, /api/figure, /api/cells, /api/gallery: one run, its evaluated splits' figures, the task's picture
  (evaluation/cells.py: a confusion matrix, a table of tags, a scatter) and the images behind each of its cells,
  paginated (GALLERY_PAGE at most a page), so a 100,000-image split opens as fast as a small one;
- /api/thumb, /api/heatmap, /api/similar: an image's thumbnail (workbench/thumbs.py), its heatmap, its nearest
  training images (the run's own embeddings of its training split, computed at the first request);
- /api/review...: label review (curation/review.py), decisions saved to the run's review/ folder as they are made;
- /try/<run>/: the service's upload page and endpoints (serving/app.py) for that run, made at the first visit.

Who may use it (the service's guard, serving/guard.py, outermost, then the token gate below): only the Host names
of this machine; a one-time token, printed in the URL as Jupyter does, which the first visit trades for a cookie
(HttpOnly, SameSite=Strict) and takes out of the address bar; every request needs that cookie (or the token in an
X-Workbench-Token header); a state-changing request also needs an Origin header naming this server (a page on
another site can neither read the token nor send the cookie with a request it makes). Images are served only when
they are listed in the run's splits.csv and lie inside its data folder: no path from a request reaches the disk
otherwise."""
from __future__ import annotations

import hmac
import secrets
import threading
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.datastructures import Headers

from ..core.errors import UserError
from ..core.figures import png_bytes, png_data_url
from ..data.decode import ImageDecodeError
from ..evaluation.compare import compare_rows
from ..evaluation.tasks import EVALUATIONS
from ..serving.guard import UNSAFE_METHODS, Guard, allowed_host_names
from .runs import Run
from .state import NotFound, Workbench
from .thumbs import Thumbnails

GALLERY_PAGE = 200       # images a gallery request returns at most (the page asks for 48)
COOKIE = "imgclass_workbench"
TOKEN_HEADER = "x-workbench-token"
STATIC = ("index.html", "app.js", "app.css")
SIMILAR_K = 8            # nearest training images shown


class TokenGate:
    """ASGI middleware (inside the guard): the token check described in the module's docstring."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        if scope["path"] == "/" and given:
            if not self._same(given):
                return await _deny(401, "wrong token: open the URL `imgclass app` printed", scope, receive, send)
            response = RedirectResponse("/", status_code=303)  # the token leaves the address bar and the history
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return await response(scope, receive, send)
        cookie = _cookie(headers.get("cookie", ""), COOKIE)
        if not (self._same(cookie) or self._same(headers.get(TOKEN_HEADER, ""))):
            return await _deny(401, "this workbench needs its token: open the URL `imgclass app` printed (with "
                               "?token=...)", scope, receive, send)
        if scope["method"] in UNSAFE_METHODS and not headers.get("origin"):
            return await _deny(403, "a change needs the Origin header of this page", scope, receive, send)
        return await self.app(scope, receive, send)

    def _same(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())


def _cookie(header: str, name: str) -> str:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


async def _deny(status: int, detail: str, scope, receive, send) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


class TryIt:
    """ASGI: /try/<run>/... answered by the service app of that run (serving/app.py create_app), made once."""

    def __init__(self, runs):
        self.runs, self._apps, self._lock = runs, {}, threading.Lock()

    async def __call__(self, scope, receive, send):
        rest = scope["path"][len("/try/"):]
        names = sorted((n for n in self.runs() if rest.startswith(n + "/") or rest == n), key=len, reverse=True)
        if not names:
            return await _deny(404, "no such run", scope, receive, send)
        name = names[0]
        if rest == name:
            return await RedirectResponse(f"/try/{name}/", status_code=307)(scope, receive, send)
        with self._lock:
            if name not in self._apps:
                from ..serving.app import create_app
                self._apps[name] = create_app(self.runs()[name].folder.path)
        inner = {**scope, "path": rest[len(name):], "root_path": scope.get("root_path", "") + f"/try/{name}"}
        return await self._apps[name](inner, receive, send)


class WorkbenchApp:
    """The ASGI app `imgclass app` serves: the guard, the token gate, then /try/<run>/ or the workbench's own routes.
    token: what the URL carries; bench: the state (workbench/state.py); api: the FastAPI app of the routes."""

    def __init__(self, api: FastAPI, try_it: TryIt, token: str, host: str):
        self.api, self.token, self.bench = api, token, api.state.bench

        async def routed(scope, receive, send):
            if scope["type"] == "http" and scope["path"].startswith("/try/"):
                return await try_it(scope, receive, send)
            return await api(scope, receive, send)
        self._app = Guard(TokenGate(routed, token), api_key=None, hosts=allowed_host_names(host), cors_origins=None)

    async def __call__(self, scope, receive, send):
        return await self._app(scope, receive, send)


def create_workbench(runs_folder: str | Path, data: str | Path | None = None, token: str | None = None,
                     host: str = "127.0.0.1", label_issues: str | Path | None = None) -> WorkbenchApp:
    """The workbench over the runs under runs_folder. data: the data folder, when a run's config.yaml names one that
    is not where it was (moved, or a relative path from elsewhere); token: the one the URL carries (default: a new
    random one); label_issues: check --label-issues's CSV, the suspects of every run trained on that data."""
    bench = Workbench(Path(runs_folder).expanduser(), data, Thumbnails(), label_issues)
    api = FastAPI(title="imgclass workbench", docs_url=None, redoc_url=None, openapi_url=None)
    api.state.bench = bench
    _pages(api)
    _run_routes(api, bench)
    _review_routes(api, bench)
    return WorkbenchApp(api, TryIt(bench.runs), token or secrets.token_urlsafe(24), host)


def _pages(app: FastAPI) -> None:
    folder = resources.files("imgclass.workbench").joinpath("static")
    media = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8",
             "css": "text/css; charset=utf-8"}

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(folder.joinpath("index.html").read_text(), headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        return Response(folder.joinpath(name).read_text(), media_type=media[name.rpartition(".")[2]])


def _run_routes(app: FastAPI, bench) -> None:
    @app.get("/api/runs")
    async def runs() -> dict[str, Any]:
        return {"runs": [r.summary() for r in bench.runs().values()], "folder": str(bench.folder)}

    @app.get("/api/compare")
    async def compare(run: list[str] = Query(...)) -> dict[str, Any]:
        picked = [bench.run(n) for n in run]
        table = compare_rows([r.folder.path for r in picked])
        return {"columns": table.columns, "cells": table.cells(), "verdict": table.verdict(),
                "curves": png_data_url(png_bytes(table.curves())), "per_class": _per_class(picked)}

    @app.get("/api/run")
    async def one_run(run: str) -> dict[str, Any]:
        r = bench.run(run)
        results = r.folder.read_results()
        return {"summary": r.summary(), "command": r.command(), "plan": results.get("plan"),
                "options": r.folder.read_config_dict(), "model_card": r.task.intended_use(r.header.classes),
                "classes": list(r.header.classes), "results": {k: v for k, v in results.items() if k != "plan"},
                "figures": {s: bench.figures(r, s) for s in r.evaluated_splits()},
                "metrics": {s: r.folder.read_eval_metrics(s) for s in r.evaluated_splits()}}

    @app.get("/api/figure")
    async def figure(run: str, split: str, name: str) -> Response:
        r = bench.run(run)
        if name not in bench.figures(r, split):
            raise HTTPException(404, "no such figure")
        return Response((r.folder.eval_dir(split) / "figures" / f"{name}.png").read_bytes(), media_type="image/png")

    @app.get("/api/cells")
    async def cells(run: str, split: str) -> dict[str, Any]:
        found = bench.cells(bench.run(run), split)
        return {"view": found.view, "lists": {key: found.titles[key] for key in found.lists}}

    @app.get("/api/gallery")
    async def gallery(run: str, split: str, key: str, offset: int = 0, limit: int = 48) -> dict[str, Any]:
        return bench.gallery(bench.run(run), split, key, max(0, offset), max(1, min(limit, GALLERY_PAGE)))

    @app.get("/api/thumb")
    def thumb(run: str, path: str) -> Response:  # plain def: decoding runs in the thread pool
        image = bench.image_file(bench.run(run), path)
        try:
            return Response(bench.thumbs.jpeg(image), media_type="image/jpeg",
                            headers={"Cache-Control": "private, max-age=3600"})
        except ImageDecodeError as exc:
            raise HTTPException(422, f"{path}: {exc}") from None

    @app.get("/api/heatmap")
    def heatmap(run: str, path: str, label: str | None = None) -> Response:
        r = bench.run(run)
        return Response(bench.heatmap(r, bench.image_file(r, path), label), media_type="image/png")

    @app.get("/api/similar")
    def similar(run: str, path: str, k: int = SIMILAR_K) -> dict[str, Any]:
        r = bench.run(run)
        return {"items": bench.similar(r, bench.image_file(r, path), max(1, min(k, 50)))}


def _review_routes(app: FastAPI, bench) -> None:
    @app.get("/api/review")
    async def review(run: str) -> dict[str, Any]:
        return bench.review(bench.run(run))

    @app.post("/api/review/find")
    def find(run: str) -> dict[str, Any]:  # plain def: embedding the images runs in the thread pool
        r = bench.run(run)
        bench.find_suspects(r)
        return bench.review(r)

    @app.post("/api/review/decide")
    async def decide(request: Request) -> dict[str, Any]:
        body = await _json(request)
        r = bench.run(str(body.get("run", "")))
        bench.decide(r, str(body.get("path", "")), str(body.get("action", "")), body.get("label"))
        return bench.review(r)

    @app.post("/api/review/undo")
    async def undo(request: Request) -> dict[str, Any]:
        body = await _json(request)
        r = bench.run(str(body.get("run", "")))
        bench.decisions(r).undo(str(body.get("path", "")))
        return bench.review(r)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body


def _per_class(runs: list[Run]) -> dict[str, Any]:
    """Each run's test score per class (or tag), as its task's evaluation names it: the comparison's differences."""
    name, scores = "", {}
    for r in runs:
        metrics = r.folder.read_eval_metrics("test") or {}
        name, scores[r.name] = EVALUATIONS[r.task.name].item_scores(metrics)
    items = sorted({i for s in scores.values() for i in s})
    return {"score": name, "items": items, "runs": {n: [s.get(i) for i in items] for n, s in scores.items()}}

