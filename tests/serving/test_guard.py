"""Who may reach the service (issue 27, items 2-4): only the Host names it is reached by, no cross-site POSTs
unless --cors allows them, the API key on every path but the page and /health, and the key out of logs."""
import logging

import httpx
import pytest
from fastapi.testclient import TestClient

from imgclass.core.errors import UserError
from imgclass.serving.app import create_app
from imgclass.serving.guard import allowed_host_names, host_name

from helpers import local_client, png_bytes, running_server

KEY = "a-long-test-key"


@pytest.fixture(scope="module")
def app(trained_run):
    return create_app(trained_run, runtime="torch", precision="float32")


def _files():
    return {"file": ("x.png", png_bytes(0), "image/png")}


def test_host_names_parse_like_rfc_3986():
    assert host_name("127.0.0.1:8000") == "127.0.0.1" and host_name("[::1]:8000") == "::1"
    assert host_name("LocalHost") == "localhost" and host_name("[::1]") == "::1"
    for bad in ("", "127.0.0.1/health?", "localhost:80/x", "a b", "[::1", "[::1]x", "host:port", "u@localhost"):
        assert host_name(bad) is None, bad
    assert allowed_host_names("0.0.0.0") == {"localhost", "127.0.0.1", "::1"}
    assert "10.0.0.5" in allowed_host_names("10.0.0.5") and "box" in allowed_host_names("::", ["Box"])
    assert allowed_host_names("0.0.0.0", ["*"]) is None


def test_only_the_names_it_is_reached_by_are_answered(app, trained_run):
    """DNS rebinding: a page whose name now points at 127.0.0.1 sends its own name as Host, and gets 400."""
    assert TestClient(app).get("/health").status_code == 400                     # TestClient's "testserver"
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "127.0.0.1/health?"):
        r = local_client(app).get("/info", headers={"Host": host})
        assert r.status_code == 400 and "unknown Host" in r.json()["detail"], host
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
        assert local_client(app).get("/health", headers={"Host": host}).status_code == 200, host
    named = create_app(trained_run, runtime="torch", precision="float32", host="0.0.0.0", allowed_hosts=("box.lan",))
    assert TestClient(named, base_url="http://box.lan:8000").get("/health").status_code == 200
    assert TestClient(named, base_url="http://other.lan").get("/health").status_code == 400
    anyone = create_app(trained_run, runtime="torch", precision="float32", allowed_hosts=("*",))
    assert TestClient(anyone).get("/health").status_code == 200


def test_cross_site_posts_are_refused_unless_cors_allows_them(app, trained_run):
    """A cross-site form POST needs no preflight: the Origin header is what tells it apart."""
    client = local_client(app)
    r = client.post("/predict", files=_files(), headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.json()["detail"]
    assert client.post("/predict", files=_files(), headers={"Origin": "null"}).status_code == 403
    assert client.post("/predict", files=_files(), headers={"Origin": "http://127.0.0.1"}).status_code == 200
    assert client.post("/predict", files=_files()).status_code == 200                   # no Origin: not a browser
    assert client.get("/info", headers={"Origin": "http://evil.example"}).status_code == 200  # reading: CORS's job
    allowed = local_client(create_app(trained_run, runtime="torch", precision="float32",
                                      cors_origins=["http://app.example"]))
    r = allowed.post("/predict", files=_files(), headers={"Origin": "http://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    assert allowed.post("/predict", files=_files(), headers={"Origin": "http://evil.example"}).status_code == 403


def test_the_key_guards_every_path_but_the_page_and_health(trained_run, monkeypatch):
    monkeypatch.delenv("IMGCLASS_API_KEY", raising=False)
    app = create_app(trained_run, runtime="torch", precision="float32", api_key=KEY, cors_origins=["http://app.example"])
    client = local_client(app)
    for path in ("/docs", "/openapi.json", "/info", "/metrics", "/no/such/route", "/predict/"):
        assert client.get(path).status_code == 401, path
    assert client.post("/explain", files=_files()).status_code == 401
    assert client.get("/").status_code == 200 and client.get("/health").status_code == 200
    assert client.get("/openapi.json", headers={"X-API-Key": KEY}).status_code == 200
    # a CORS preflight never carries the key: from an allowed origin it is answered
    r = client.options("/predict", headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                                            "Access-Control-Request-Headers": "x-api-key"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    # the path checked is the one routed: a poisoned Host header changes nothing
    anyone = local_client(create_app(trained_run, runtime="torch", precision="float32", api_key=KEY,
                                     allowed_hosts=("*",)))
    assert anyone.post("/predict", files=_files(), headers={"Host": "x/health?y="}).status_code in (400, 401)
    assert anyone.post("/predict", files=_files(), headers={"Host": "localhost"}).status_code == 401
    monkeypatch.setenv("IMGCLASS_API_KEY", "short")
    with pytest.raises(UserError, match="at least 8"):
        create_app(trained_run)


class _Kept(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_the_key_in_the_page_address_stays_out_of_logs(trained_run, monkeypatch):
    """The page takes its key after '#' (never sent), and an old-style ?api_key= is cut from the request before
    uvicorn's access log reads it; responses carry Referrer-Policy: no-referrer."""
    monkeypatch.delenv("IMGCLASS_API_KEY", raising=False)
    app = create_app(trained_run, runtime="torch", precision="float32", api_key=KEY)
    kept = _Kept()
    access = logging.getLogger("uvicorn.access")
    try:
        with running_server(app, log_level="info") as url:
            access.addHandler(kept)  # after uvicorn configured its loggers
            page = httpx.get(f"{url}/?api_key={KEY}&x=1")
            assert page.status_code == 200 and page.headers["referrer-policy"] == "no-referrer"
            assert httpx.get(f"{url}/info?api_key={KEY}", headers={"X-API-Key": KEY}).status_code == 200
    finally:
        access.removeHandler(kept)
    logged = "\n".join(kept.lines)
    assert "GET /?x=1" in logged and "GET /info" in logged      # the access log ran, and lost only the key
    assert KEY not in logged
    assert "location.hash" in page.text and "location.search).get" not in page.text
    assert "history.replaceState" in page.text and 'name="referrer" content="no-referrer"' in page.text
