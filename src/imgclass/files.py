"""Writing run files so a kill at any moment leaves the old file or the new one, never half of one."""
from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write to a temp file beside the target (named by process, so two writers never share it),
    flush it to disk, then rename it over the target: os.replace is atomic on POSIX and Windows."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
