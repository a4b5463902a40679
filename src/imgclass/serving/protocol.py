"""uvicorn's HTTP/1.1 protocol (h11) with deadlines for the part before a request exists.

uvicorn starts no timer when a connection opens: its keep-alive timer starts after a response, and our body
deadline (app.UploadLimit) only once the headers are in. A client that opens a socket and sends half a request
line, or nothing, held a connection for as long as it liked, and `limit_concurrency` counts connections: 64 such
sockets made every new request a 503 (measured before this fix: 70 half-open sockets, a normal client refused).

This subclass closes the class of problem at the connection level, where an ASGI middleware cannot reach (the
app is called only once the headers are complete):
- a connection must deliver a complete request head within `header_seconds` of opening, or of its previous
  response (the wait for the next request on a kept-alive connection); otherwise it is closed;
- a connection that is waiting for its request head does not count against `limit_concurrency`, so sockets that
  never send a request cannot lock out the clients that do; at most `max_waiting` such sockets are held at once:
  past that the one that has waited longest is closed (not the newcomer, which is most likely a client about to
  send its request), so the waiting ones cannot exhaust file descriptors either.

Chosen over a reverse proxy (which a deployment may still add) so that `imgclass serve` alone is safe; uvicorn's
other implementation (httptools) is not installed with imgclass, and `serve` passes this class explicitly.
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import LIMITS


class _ActiveConnections:
    """uvicorn's shared set of connections, counted (for limit_concurrency) without the connections that are
    still waiting for a request head. add/discard and iteration (shutdown) see every connection."""

    def __init__(self, real: set):
        self.real = real

    def add(self, connection) -> None:
        self.real.add(connection)

    def discard(self, connection) -> None:
        self.real.discard(connection)

    def __iter__(self):
        return iter(self.real)

    def __len__(self) -> int:
        return sum(1 for c in self.real if not getattr(c, "waiting_for_request", False))


class DeadlineH11Protocol(H11Protocol):
    header_seconds: float = LIMITS.header_seconds   # a request head must be complete within this
    max_waiting: int = LIMITS.waiting_connections   # connections waiting for a request head, at most

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.connections = _ActiveConnections(self.server_state.connections)
        self._head_timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0  # when this connection started waiting for its current request head

    @property
    def waiting_for_request(self) -> bool:
        """No request head received yet on this connection (new, or kept alive after a response)."""
        return self.conn.their_state is h11.IDLE

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        waiting = [c for c in self.server_state.connections
                   if getattr(c, "waiting_for_request", False) and not c.transport.is_closing()]
        if len(waiting) > self.max_waiting:
            oldest = min(waiting, key=lambda c: c._waiting_since)
            oldest._disarm()
            oldest.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.waiting_for_request:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.waiting_for_request:
            self._arm()  # the next request's head has the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.header_seconds, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.waiting_for_request and not self.transport.is_closing():
            self.transport.close()


def use_limits(header_seconds: float, max_waiting: int) -> type[DeadlineH11Protocol]:
    """Set this process's deadline and cap (serve() in the parent; app_from_env in each worker process, since
    uvicorn builds the protocol there) and return the class to hand uvicorn."""
    DeadlineH11Protocol.header_seconds, DeadlineH11Protocol.max_waiting = header_seconds, max_waiting
    return DeadlineH11Protocol
