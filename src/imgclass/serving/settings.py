"""What `imgclass serve` takes, with its defaults: written once here, read by the service (app.py) and by the
command line's options (cli.py), and light to import (`imgclass serve --help` loads no torch)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.errors import UserError
from ..core.options import option
from ..inference.defaults import RuntimeChoice
from .batcher import BATCHING, Batching
from .limits import LIMITS, Limits

SERVE_MAX_PIXELS = 30_000_000  # pixels an uploaded image may claim: a 24-megapixel camera photo passes
#                               (training's limit is 89M)
SERVE_MAX_DECODE_MB = 300      # memory one upload's decode may take at its peak (data.decode.decode_bytes): every
#                               format at 30 MP fits (measured peaks: RGB PNG 120 MB, RGBA 250 MB, JPEG 5 MB)
MAX_BATCH = 64      # images per /predict/batch request: more get a JSON 413


def default_concurrency() -> int:
    """Requests decoding/predicting at once: one per core up to 4 (measured on 2 cores: two requests
    with one thread each finish together sooner than one after the other with two threads)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServeSettings(RuntimeChoice):
    """What `imgclass serve` takes besides the model: one commented field per option (see docs/security.md),
    checked when made. The command line's options are generated from these fields (core/options.py)."""
    host: str = "127.0.0.1"              # address to listen on: this machine only unless told otherwise
    port: int = 8000                     # the port
    workers: int = 1                     # processes, each batching on its own with its share of the cores
    max_upload_mb: float = 10.0          # a request body's size at most (413 beyond)
    api_key_file: str | None = option(None, metavar="FILE")  # require the key on this file's first line in the
    # X-API-Key header on every path but the page and /health (or set IMGCLASS_API_KEY; never on the command line,
    # where ps shows it)
    cors: tuple[str, ...] = option((), metavar="ORIGIN")  # allow these browser origins (CORS and cross-site POSTs;
    # none: off)
    allowed_hosts: tuple[str, ...] = option((), metavar="NAME")  # Host names answered besides localhost, 127.0.0.1,
    # ::1 and --host, e.g. the machine's name when listening on 0.0.0.0 ('*': any; others get 400)
    max_batch: int = MAX_BATCH           # images in one /predict/batch request at most (413 beyond)
    max_pixels: int = option(SERVE_MAX_PIXELS, flags=("--max-image-pixels",))  # pixels an upload's header may
    # claim (the model file can lower it)
    max_decode_mb: float = SERVE_MAX_DECODE_MB  # memory one upload's decode may take at its peak (400 beyond)
    max_concurrent: int | None = option(None, shown_default="one per core, up to 4")  # requests decoding at once
    batching: Batching = BATCHING        # dynamic batching: batch size, delay, queue
    limits: Limits = option(LIMITS, cli=False)  # connections, keep-alive, the body's time

    def __post_init__(self) -> None:
        """A UserError naming the first setting out of range."""
        for name in ("workers", "max_batch", "max_concurrent", "max_pixels", "max_decode_mb"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                flag = "--max-image-pixels" if name == "max_pixels" else f"--{name.replace('_', '-')}"
                raise UserError(f"{flag} must be at least 1")
        if self.batching.max_batch_size < 1 or self.batching.max_queue < 1:
            raise UserError("--max-batch-size and --max-queue must be at least 1")
        if self.batching.max_delay_ms < 0:
            raise UserError("--max-batch-delay-ms must be 0 or more")
        if not self.max_upload_mb > 0:
            raise UserError("--max-upload-mb must be more than 0")
