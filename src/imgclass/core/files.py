"""Writing run files so a kill at any moment leaves the old file or the new one, never half of one."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError


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


@contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` for any writer (safetensors, onnx.save, torch.jit.save, a copy) to write
    the file under; when the block completes the file is flushed to disk and renamed to `path`, and whatever
    fails, the temporary file is removed: a crash never leaves a damaged file under the name."""
    tmp = temp_name(Path(path))
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temp_name(path: Path) -> Path:
    """A temporary name beside `path` for this process and thread: two writers (processes, or a service's
    threads) never write the same temporary file."""
    return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


@contextmanager
def building_folder(out: Path, mode: int = 0o755) -> Iterator[Path]:
    """A temporary sibling of the folder `out` (new, or empty) to fill inside the block, renamed to `out` when
    the block completes: a kill at any moment never leaves a folder that looks whole but lacks files, and nothing
    is overwritten (a folder export: hub, OpenVINO, Core ML, Triton). mode: the finished folder's permissions."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} is not empty: give --out a new folder, or remove it (nothing is overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".building", dir=out.parent))
    try:
        yield building
        os.chmod(building, mode)  # mkdtemp made it 0700
        try:
            os.replace(building, out)  # an empty `out` is replaced; one filled meanwhile is not
        except OSError:
            raise UserError(f"{out} was filled while the export ran: nothing was overwritten") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)


def private_folder(path: Path, others_may_read: bool = False) -> bool:
    """Make `path` (and any missing folder above it, each mode 0700) and say whether it is this user's alone: the
    folder and every folder it hangs from are real folders (not links) that no one else can change, a folder that
    others may write only with the sticky bit (as /tmp: they cannot rename what is not theirs); the folder itself
    readable by no one else unless others_may_read. A cache in a folder
    that fails this (a shared $XDG_CACHE_HOME, a parent another user owns) is not used: someone else could swap a
    folder on the way and substitute what is read from it, or what is removed."""
    import stat
    path = Path(os.path.abspath(path))
    try:
        missing = [p for p in [path, *path.parents] if not os.path.lexists(p)]
        for folder in reversed(missing):
            folder.mkdir(mode=0o700)
        me = os.getuid()
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != me or st.st_mode & (0o022 if others_may_read else 0o077):
            return False
        for folder in path.parents:
            st = folder.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (me, 0):
                return False
            if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
                return False
    except OSError:
        return False
    return True
