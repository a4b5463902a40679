"""Slow and silent clients (issue 27, item 1): sockets that never complete a request head are closed after the
deadline and never count against the connection limit, so a normal client is answered while 70 of them wait."""
import socket
import time

import httpx
import pytest

from imgclass.serving.app import create_app
from imgclass.serving.protocol import DeadlineH11Protocol, use_limits

from helpers import running_server


@pytest.fixture
def short_deadline():
    """A 3 s request-head deadline for this test (the default is LIMITS.header_seconds)."""
    before = DeadlineH11Protocol.header_seconds, DeadlineH11Protocol.max_waiting
    yield use_limits(3.0, 512)
    use_limits(*before)


def _half_open(url: str, n: int, head: bytes) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=5)
        if head:
            s.sendall(head)
        socks.append(s)
    return socks


def _closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1024) == b""
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        return True


def test_half_open_connections_lock_nobody_out_and_are_closed(trained_run, short_deadline):
    app = create_app(trained_run, runtime="torch", precision="float32")
    with running_server(app, http=short_deadline, limit_concurrency=64) as url:
        stalled = _half_open(url, 70, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1")   # half a request head
        silent = _half_open(url, 5, b"")                                            # nothing at all
        time.sleep(0.2)
        started = time.monotonic()
        answer = httpx.get(f"{url}/health", timeout=5)
        assert answer.status_code == 200 and time.monotonic() - started < 2.0      # not after the 3 s deadline
        assert all(_closed_by_server(s, 6.0) for s in stalled + silent)
        # a kept-alive connection: its next request head has the same deadline
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            response = b""
            while not response.endswith(b"}"):  # the whole response: head and JSON body
                response += s.recv(4096)
            assert response.startswith(b"HTTP/1.1 200 OK")
            s.sendall(b"GET /health HTTP/1.1\r\n")
            assert _closed_by_server(s, 6.0)
        for s in stalled + silent:
            s.close()
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200


def test_waiting_connections_are_capped_oldest_first(trained_run, short_deadline):
    """At most max_waiting sockets wait for a request head: past that the longest-waiting is closed, so the
    newcomer (a client about to send its request) is answered."""
    use_limits(30.0, 8)  # a long deadline, few waiting sockets
    app = create_app(trained_run, runtime="torch", precision="float32")
    with running_server(app, http=DeadlineH11Protocol) as url:
        socks = []
        for _ in range(12):
            socks += _half_open(url, 1, b"GET / HTTP/1.1\r\n")
            time.sleep(0.05)  # in order: the server sees them oldest first
        closed = [_closed_by_server(s, 0.5) for s in socks]
        assert closed == [True] * 4 + [False] * 8
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        for s in socks:
            s.close()
