"""Running the workbench: uvicorn on the chosen address, the URL with its token printed (as Jupyter does)."""
from __future__ import annotations

import sys

from ..core import log
from ..core.errors import UserError
from .app import create_workbench


def workbench_url(host: str, port: int, token: str) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/?token={token}"


def run_workbench(request) -> None:
    """Serve the workbench of request (requests.AppRequest) until stopped."""
    import uvicorn
    app = create_workbench(request.runs, request.data, host=request.host, label_issues=request.label_issues)
    url = workbench_url(request.host, request.port, app.token)
    runs = app.bench.runs()
    log.info(f"{len(runs)} run(s) under {request.runs}" + ("" if runs else
             " (none yet: `imgclass demo` or `imgclass train DATA` makes one; new runs appear by themselves)"))
    print(f"the workbench: {url}\n(the token in this URL is the key to it: share it with no one)", file=sys.stderr,
          flush=True)
    if request.open_browser:
        import webbrowser
        webbrowser.open(url)
    try:
        uvicorn.run(app, host=request.host, port=request.port, log_level="warning")
    except OSError as exc:
        raise UserError(f"cannot listen on {request.host}:{request.port}: {exc.strerror or exc}") from None
