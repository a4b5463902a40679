"""Thumbnails for the workbench's galleries: made once per image (JPEG, THUMB_SIDE px on the longer side) and kept in
the user's cache (IMGCLASS_CACHE_DIR, else ~/.cache/imgclass, under thumbnails/), bounded to THUMB_CACHE_BYTES: past it
the least recently used are removed. Keyed by the image's absolute path, size and modification time, so an edited
image gets a new thumbnail. Decoded as every command decodes (data/decode.py's open_rgb: the pixel limit, the format
list, the decode budget), so a gallery of a bomb is a refusal, not a crash. The cache is used only when it is this
user's alone (core/files.py private_folder); otherwise thumbnails are made each time and not kept."""
from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

from ..core.files import private_folder, write_bytes_atomic
from ..data.cache import default_cache_dir
from ..data.decode import open_rgb
from ..data.defaults import DEFAULT_MAX_PIXELS

THUMB_SIDE = 192                  # px on the longer side (a gallery tile is 160 px wide; sharp on a 1.2x screen)
THUMB_CACHE_BYTES = 256 * 2 ** 20  # the thumbnails kept at most; pruned to PRUNE_TO of it when passed
PRUNE_TO = 0.8
PRUNE_EVERY = 256                 # new thumbnails between two looks at the cache's size


class Thumbnails:
    def __init__(self, folder: str | Path | None = None, max_bytes: int = THUMB_CACHE_BYTES):
        self.folder = Path(folder) if folder is not None else default_cache_dir() / "thumbnails"
        self.max_bytes = max_bytes
        self.kept = private_folder(self.folder)
        self._made = 0
        self._lock = threading.Lock()

    def jpeg(self, image: Path) -> bytes:
        """The thumbnail of one image file (ImageDecodeError with the reason when it cannot be read)."""
        st = image.stat()
        key = hashlib.sha256(f"{image.resolve()}|{st.st_size}|{st.st_mtime_ns}|{THUMB_SIDE}".encode()).hexdigest()
        file = self.folder / key[:2] / f"{key}.jpg"
        if self.kept and file.is_file():
            os.utime(file)  # its last use: what pruning keeps
            return file.read_bytes()
        img = open_rgb(image, draft_size=THUMB_SIDE, max_pixels=DEFAULT_MAX_PIXELS)
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        if self.kept:
            file.parent.mkdir(exist_ok=True)
            write_bytes_atomic(file, data)
            with self._lock:
                self._made += 1
                if self._made % PRUNE_EVERY == 0:
                    self.prune()
        return data

    def prune(self) -> None:
        """Remove the least recently used thumbnails until they take PRUNE_TO of max_bytes (when over it)."""
        files = [(f.stat().st_mtime, f.stat().st_size, f) for f in self.folder.glob("*/*.jpg")]
        total = sum(size for _, size, _ in files)
        if total <= self.max_bytes:
            return
        for _, size, f in sorted(files):
            f.unlink(missing_ok=True)
            total -= size
            if total <= self.max_bytes * PRUNE_TO:
                break
