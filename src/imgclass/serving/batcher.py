"""Dynamic batching: concurrent requests' images are scored together, as Triton's and TorchServe's batchers do.

Request threads decode their images and hand them to the Batcher; one thread takes what is queued and runs
the model on it as one batch when max_batch_size images are waiting, or when the oldest has waited
max_delay_s. Each image gets its own answer (or its own error) through a Future. The queue is bounded
(max_queue images): past that, submit raises QueueFull and the service answers 503 with Retry-After.

Written here rather than taken from a serving engine: Triton, TorchServe and Ray Serve are whole servers
of their own; this is the 80-line core of what they do, on the model file's own decode and engine.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # numpy is imported when the first batch runs: `imgclass --help` reads BATCHING from here
    import numpy as np


@dataclass(frozen=True)
class Batching:
    # Measured (bench/serve_load.py --sweep, Lite0 224 px in ONNX Runtime, machine A, 2026-11-23; req/s at
    # 1 / 8 / 16 clients): batch 16, delay 0: 90 / 115 / 129; batch 16, delay 5 ms: 55 / 110 / 103; batch 8,
    # 2 ms: 70 / 118 / 126; batch 32, 10 ms: 40 / 126 / 124; batch 1 (no batching): 86 / 104 / 102. Images
    # that arrive while a batch runs queue up and form the next batch anyway, so waiting only adds latency.
    max_batch_size: int = 16      # images scored in one model call at most
    max_delay_ms: float = 0.0     # how long the oldest waiting image may wait for others to join its batch
    max_queue: int = 256          # decoded images waiting at most (224 px: 150 kB each); more -> 503


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

    def _take(self) -> list[tuple[float, np.ndarray, Future]]:
        """Wait for a full batch, or for the oldest image's delay to pass; return the batch."""
        with self._ready:
            while not self._queue:
                self._ready.wait()
            deadline = self._queue[0][0] + self.max_delay_s
            while len(self._queue) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                self._ready.wait(left)
            return [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]

    def _run(self) -> None:
        import numpy as np
        while True:
            batch = self._take()
            try:
                probs = self.score(np.stack([image for _, image, _ in batch]))
            except Exception as exc:  # noqa: BLE001 - the batch's requests get the error; the service goes on
                for _, _, future in batch:
                    future.set_exception(exc)
                continue
            self.calls += 1
            self.images += len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for row, (_, _, future) in zip(probs, batch):
                future.set_result(row)
