"""Writing run files so a kill at any moment leaves the old file or the new one, never half of one."""
from __future__ import annotations

import os
import threading
from pathlib import Path


def write_text_atomic(path: str | Path, text: str, mode: int = 0o666) -> None:
    """Write to a temp file beside the target (named by process, so two writers never share it),
    flush it to disk, then rename it over the target: os.replace is atomic on POSIX and Windows.
    mode: the new file's permissions (less the umask), e.g. 0o600 for what only its owner may read."""
    write_bytes_atomic(path, text.encode("utf-8"), mode)


def write_bytes_atomic(path: str | Path, data: bytes, mode: int = 0o666) -> None:
    """write_text_atomic for bytes."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temp_name(path: Path) -> Path:
    """A temporary name beside `path` for this process and thread: two writers (processes, or a service's
    threads) never write the same temporary file."""
    return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
