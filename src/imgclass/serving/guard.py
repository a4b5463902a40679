"""The service's outermost ASGI middleware: who may reach it and what it leaves in logs.

- **Host.** Only the names the service is reached by are answered (localhost, 127.0.0.1, ::1, the --host it
  listens on, and --allowed-hosts); any other Host header gets a JSON 400. A web page that rebinds its own name
  to 127.0.0.1 (DNS rebinding) then reaches nothing: its requests carry its own name as Host.
  (Starlette's TrustedHostMiddleware does this check too, but splits the port off at the first colon, which
  breaks IPv6 literals such as [::1]:8000; the parsing below is RFC 3986's.)
- **Origin.** A state-changing request (POST, PUT, PATCH, DELETE) whose Origin header names another site than
  the Host it was sent to is refused with a JSON 403, unless --cors allows that origin: a cross-site form POST
  needs no CORS preflight, so CORS being off does not stop it reaching the model.
- **API key.** When a key is set every path needs it (X-API-Key) except the upload page and /health, and a
  CORS preflight from an allowed origin; the path checked is the routed one (the ASGI scope's "path", which the
  Host header cannot change: Starlette before 1.0.1 rebuilt `request.url` from the Host header, CVE-2026-48710).
  A new route is therefore guarded by default.
- **The key stays out of logs.** An `api_key` query parameter (the upload page used to take one) is removed
  from the request before anything, uvicorn's access log included, reads it; responses carry
  `Referrer-Policy: no-referrer` so no page URL travels on.
"""
from __future__ import annotations

import hmac
from typing import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")  # listening on every address names no host
OPEN_PATHS = frozenset({"/", "/health"})    # the upload page and the orchestrator's probe: never behind the key
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURITY_HEADERS = [(b"referrer-policy", b"no-referrer"), (b"x-content-type-options", b"nosniff")]


def allowed_host_names(listen_host: str | None, extra: tuple[str, ...] | list[str] = ()) -> frozenset[str] | None:
    """The Host names the service answers to (lower case, no port); None: any ("*" among the extra names)."""
    if "*" in extra:
        return None
    names = set(LOCAL_NAMES) | {_bare(h) for h in extra}
    if listen_host and listen_host not in WILDCARD_ADDRESSES:
        names.add(_bare(listen_host))
    return frozenset(names)


def host_name(value: str) -> str | None:
    """The host of a Host header value without its port ("[::1]:8000" -> "::1"); None if malformed."""
    value = value.strip().lower()
    if not value or any(c in value for c in "/?#@\\ \t"):
        return None
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1:]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return value[1:end]
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


def _bare(host: str) -> str:
    host = host.strip().lower()
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class Guard:
    """ASGI middleware (outermost): Host, Origin and API-key checks, the key out of the query string, security
    headers. refused(status) is told of every refusal (the service's /metrics)."""

    def __init__(self, app, api_key: str | None, hosts: frozenset[str] | None, cors_origins: list[str] | None,
                 refused: Callable[[int], None] | None = None):
        self.app, self.api_key, self.hosts = app, api_key, hosts
        self.cors = frozenset(o.rstrip("/") for o in cors_origins or ())
        self.refused = refused or (lambda status: None)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        _drop_key_from_query(scope)
        headers = Headers(scope=scope)
        host = host_name(headers.get("host", ""))
        if host is None or (self.hosts is not None and host not in self.hosts):
            return await self._refuse(400, "unknown Host: this service answers to "
                                      + ", ".join(sorted(self.hosts or ())) + " (--allowed-hosts adds names)",
                                      scope, receive, send)
        origin = headers.get("origin")
        if scope["method"] in UNSAFE_METHODS and origin is not None and not self._same_or_allowed(origin, headers):
            return await self._refuse(403, "cross-site request refused: this origin is not allowed (--cors ORIGIN "
                                      "allows one)", scope, receive, send)
        if self.api_key and scope["path"] not in OPEN_PATHS and not self._allowed_preflight(scope, origin):
            given = headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return await self._refuse(401, "missing or wrong API key (X-API-Key header)", scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + SECURITY_HEADERS}
            await send(message)
        return await self.app(scope, receive, with_headers)

    def _same_or_allowed(self, origin: str, headers: Headers) -> bool:
        if origin.rstrip("/") in self.cors:
            return True
        parts = urlsplit(origin)  # the same site: its host and port are the Host this request was sent to
        return parts.scheme in ("http", "https") and parts.netloc.lower() == headers.get("host", "").strip().lower()

    def _allowed_preflight(self, scope, origin: str | None) -> bool:
        """A CORS preflight (it never carries the key) from an origin --cors allows."""
        return scope["method"] == "OPTIONS" and origin is not None and origin.rstrip("/") in self.cors

    async def _refuse(self, status: int, detail: str, scope, receive, send) -> None:
        self.refused(status)
        response = JSONResponse({"detail": detail}, status_code=status)
        response.raw_headers.extend(SECURITY_HEADERS)
        await response(scope, receive, send)


def _drop_key_from_query(scope) -> None:
    """Remove api_key=... from the request's query string, in place: uvicorn's access log reads the same scope."""
    query = scope.get("query_string", b"")
    if b"api_key" not in query.lower():
        return
    kept = [(k, v) for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            if k.lower() != "api_key"]
    scope["query_string"] = urlencode(kept).encode("latin-1")
