"""Dynamic batching: concurrent requests' images are scored together, as Triton's and TorchServe's batchers do.

Request threads decode their images and hand them to the Batcher; one thread takes what is queued and runs
the model on it as one batch when max_batch_size images are waiting, or when the oldest has waited
max_delay_s. Each image gets its own answer (or its own error) through a Future. The queue is bounded
(max_queue images): past that, submit raises QueueFull and the service answers 503 with Retry-After.

The one batching thread must not die: every service request would then wait forever while /health said ok.
So a waiter that gave up (its Future cancelled: a client gone, a timeout, shutdown) is skipped, a model call
that fails or answers the wrong number of rows fails only its batch, anything else raised in the loop is
caught and logged, and `alive` tells /health whether the thread still runs. The service also bounds each
wait (Batching.max_wait_s, then 504).

Written here rather than taken from a serving engine: Triton, TorchServe and Ray Serve are whole servers
of their own; this is the 80-line core of what they do, on the model file's own decode and engine.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..core.options import option

log = logging.getLogger("imgclass")

if TYPE_CHECKING:  # numpy is imported when the first batch runs: `imgclass --help` reads BATCHING from here
    import numpy as np


@dataclass(frozen=True)
class Batching:
    # Measured (bench/serve_load.py --sweep, Lite0 224 px in ONNX Runtime, machine A, 2026-11-23; req/s at
    # 1 / 8 / 16 clients): batch 16, delay 0: 90 / 115 / 129; batch 16, delay 5 ms: 55 / 110 / 103; batch 8,
    # 2 ms: 70 / 118 / 126; batch 32, 10 ms: 40 / 126 / 124; batch 1 (no batching): 86 / 104 / 102. Images
    # that arrive while a batch runs queue up and form the next batch anyway, so waiting only adds latency.
    max_batch_size: int = 16      # dynamic batching: images scored in one model call at most
    max_delay_ms: float = option(0.0, flags=("--max-batch-delay-ms",))  # dynamic batching: how long an image may
    # wait for others to join its batch
    max_queue: int = 256          # decoded images waiting at most (224 px: 150 kB each); more get 503
    max_wait_s: float = option(60.0, cli=False)  # a request waits this long at most for its answers (then 504)


BATCHING = Batching()


class QueueFull(Exception):
    """More images are waiting than the queue holds."""


class Batcher:
    def __init__(self, score: Callable[[np.ndarray], np.ndarray], max_batch_size: int, max_delay_s: float,
                 max_queue: int):
        """score: N x H x W x 3 uint8 images -> N x classes probabilities (in this one thread)."""
        self.score, self.max_batch_size, self.max_delay_s = score, max(1, max_batch_size), max(0.0, max_delay_s)
        self.max_queue = max(self.max_batch_size, max_queue)
        self._queue: deque[tuple[float, np.ndarray, Future]] = deque()
        self._ready = threading.Condition()
        self.calls = 0          # model calls so far (batches)
        self.images = 0         # images scored so far
        self.on_batch: Callable[[int], None] | None = None  # told each batch's size (the service's /metrics)
        self._thread = threading.Thread(target=self._run, name="imgclass-batcher", daemon=True)
        self._thread.start()

    def submit(self, images: list[np.ndarray]) -> list[Future]:
        """One Future per image (its probability row); all or none are queued."""
        futures = [Future() for _ in images]
        with self._ready:
            if len(self._queue) + len(images) > self.max_queue:
                raise QueueFull(f"{len(self._queue)} images are waiting (--max-queue {self.max_queue})")
            now = time.monotonic()
            self._queue.extend((now, image, future) for image, future in zip(images, futures))
            self._ready.notify()
        return futures

    @property
    def alive(self) -> bool:
        """Whether the batching thread still runs (the service's /health says 503 when it does not)."""
        return self._thread.is_alive()

    def _take(self) -> list[tuple[float, np.ndarray, Future]]:
        """Wait for a full batch, or for the oldest image's delay to pass; return the batch, without the images
        whose waiter has given up (cancelled Futures)."""
        with self._ready:
            while not self._queue:
                self._ready.wait()
            deadline = self._queue[0][0] + self.max_delay_s
            while len(self._queue) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                self._ready.wait(left)
            taken = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
        return [item for item in taken if item[2].set_running_or_notify_cancel()]

    def _run(self) -> None:
        while True:
            try:
                self._one_batch()
            except BaseException:  # noqa: BLE001 - nothing may end this thread: log it and go on
                log.exception("the batching thread caught an error; it goes on")

    def _one_batch(self) -> None:
        import numpy as np
        batch = self._take()
        if not batch:
            return
        try:
            probs = self.score(np.stack([image for _, image, _ in batch]))
            if len(probs) != len(batch):
                raise RuntimeError(f"the model answered {len(probs)} rows for {len(batch)} images")
        except Exception as exc:  # noqa: BLE001 - the batch's requests get the error; the service goes on
            for _, _, future in batch:
                future.set_exception(exc)
            return
        self.calls += 1
        self.images += len(batch)
        for row, (_, _, future) in zip(probs, batch):
            future.set_result(row)  # (running, so not cancellable any more: this cannot raise)
        if self.on_batch is not None:
            self.on_batch(len(batch))
