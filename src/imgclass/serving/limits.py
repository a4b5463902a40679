"""The service's connection-level limits, in one place: the app (app.py) and the HTTP protocol (protocol.py)
both read them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    connections: int = 64            # connections with a request in progress uvicorn accepts; more get 503
    keep_alive_seconds: int = 5      # an idle keep-alive connection is closed after this long
    body_seconds: float = 30.0       # the whole request body must arrive within this (slow clients get 408)
    header_seconds: float = 5.0      # a request head must be complete within this of connecting (or of the
    #                                  previous response); slower connections are closed (protocol.py)
    waiting_connections: int = 512   # connections waiting for a request head, at most; past it the oldest is closed
    slot_seconds: float = 30.0       # a request waits this long at most for a decoding slot or a heatmap's turn (503)


LIMITS = Limits()
