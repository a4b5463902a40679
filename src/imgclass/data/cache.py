"""Decode once: each split's images, decoded, oriented, converted and resized to the
training resolution, are kept as a uint8 N x 3 x S x S .npy file in a cache folder
outside the dataset, and memory-mapped on later runs (no decoding at all).

The key covers the file list with each file's size and modification time, the
input size, the resize policy and the pixel limit, so changing any file (or the
preprocessing) makes a new entry. A cache larger than memory still works: batches
are sliced from the memory map and the OS pages them in.

An entry is filled under a file lock (the filelock package: an OS lock, released
even when its holder is killed), so two processes that need the same entry (two
`tune` workers) decode it once: one fills it, the other waits and maps it. The
lock holder also removes temp files that a killed filler left behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from filelock import FileLock, Timeout

from .images import ImageTensors, decode_in_chunks, label_tensor, load_split
from .preprocess import Preprocessing
from ..core import log
from ..core.files import private_folder, temp_name, write_text_atomic

CACHE_VERSION = 2  # 2: one row per listed file, the good ones first
CHUNK = 4096       # files decoded at a time when filling the cache (bounded memory)
DISK_MARGIN = 1 << 30  # keep this much disk free beyond a new cache file


def cache_bytes(n: int, img_size: int) -> int:
    return n * 3 * img_size * img_size


def fits_on_disk(cache_dir: Path | None, n: int, img_size: int) -> bool:
    """Whether a cache of n images at this size fits in the cache folder's free space (with a margin)."""
    d = Path(cache_dir) if cache_dir else default_cache_dir()
    while not d.exists() and d != d.parent:  # the nearest existing folder tells the disk
        d = d.parent
    return shutil.disk_usage(d).free >= cache_bytes(n, img_size) + DISK_MARGIN


def default_cache_dir() -> Path:
    env = os.environ.get("IMGCLASS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgclass"


def cache_key(root: Path, rows: list[tuple[str, int]], pre: Preprocessing) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "size": pre.img_size, "resize": pre.resize,
                         "max_pixels": pre.max_pixels, "root": str(root.resolve())}).encode())
    for rel, _ in rows:
        try:
            st = (root / rel).stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{rel}\0missing\n".encode())
    return h.hexdigest()[:32]


def is_cached(root: Path, rows: list[tuple[str, int]], pre: Preprocessing, cache_dir: Path | None) -> bool:
    key = cache_key(root, rows, pre)
    d = Path(cache_dir) if cache_dir else default_cache_dir()
    return (d / f"{key}.npy").is_file() and (d / f"{key}.json").is_file()




def _open_entry(data_file: Path, meta_file: Path, n: int, img_size: int) -> tuple[np.ndarray, dict] | str:
    """(memory map, metadata) of a cache entry, or why it cannot be used: its files are checked against
    each other and the split (size, header, shape, row indices) before any image is read from them."""
    try:
        meta = json.loads(meta_file.read_text())
        # mode "c" (copy-on-write) gives a writable array, so torch shares it without copying
        arr = np.load(data_file, mmap_mode="c")
    except (OSError, ValueError) as exc:  # truncated or garbled (json's errors are ValueErrors)
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not isinstance(meta, dict) or not isinstance(meta.get("good"), list) or not isinstance(meta.get("bad"), list):
        return "its metadata is incomplete"
    if arr.dtype != np.uint8 or arr.shape != (n, 3, img_size, img_size) or meta.get("n") != n:
        return f"shape {arr.shape}, expected {(n, 3, img_size, img_size)}"
    if not all(isinstance(i, int) and 0 <= i < n for i in meta["good"]):
        return "its metadata names rows outside the file"
    return arr, meta


def load_cached(root: Path, rows: list[tuple[str, int]], pre: Preprocessing, cache_dir: Path | None,
                workers: int = 0, on_progress: Callable[[int], None] | None = None,
                on_warning: Callable[[str], None] | None = None) -> tuple[ImageTensors, bool]:
    """(tensors, hit). On a miss the split is decoded (in a thread pool) and written to the cache, under
    the entry's lock; a damaged entry is discarded with a one-line warning and rebuilt."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    # a cache someone else can change could hand back their pixels for ours (its files are the owner's to read alone)
    if not private_folder(cache_dir, others_may_read=True):
        (on_warning or log.warning)(f"the decoded-image cache {cache_dir} is not this user's alone (it, or a folder "
                                    f"above it, is a link or others may write it): decoding in memory instead")
        return load_split(root, rows, pre, workers, on_progress=on_progress), False
    key = cache_key(root, rows, pre)
    hit = _mapped(cache_dir, key, rows, pre, on_warning)
    if hit is not None:
        return hit, True
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with FileLock(cache_dir / f"{key}.lock", mode=0o600):
        hit = _mapped(cache_dir, key, rows, pre, on_warning)  # filled by another process while we waited
        if hit is not None:
            return hit, True
        for orphan in cache_dir.glob(f"{key}.*.tmp"):  # only the lock holder writes these: a killed filler's
            orphan.unlink(missing_ok=True)
        _fill(cache_dir, key, root, rows, pre, workers, on_progress)
        return _mapped(cache_dir, key, rows, pre, on_warning), False


def _mapped(cache_dir: Path, key: str, rows: list[tuple[str, int]], pre: Preprocessing,
            on_warning: Callable[[str], None] | None) -> ImageTensors | None:
    """The entry's images memory-mapped, or None when it is missing or was damaged (and is now removed)."""
    data_file, meta_file = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if not (data_file.is_file() and meta_file.is_file()):
        return None
    entry = _open_entry(data_file, meta_file, len(rows), pre.img_size)
    if isinstance(entry, str):  # damaged (a truncated file, say): discard it and decode again
        (on_warning or log.warning)(f"the cache entry {data_file.name} is unusable ({entry}); it is rebuilt")
        for f in (data_file, meta_file):
            f.unlink(missing_ok=True)
        return None
    arr, meta = entry
    os.utime(meta_file)  # "last used", for `imgclass cache clear --older-than`
    good = meta["good"]
    return ImageTensors(images=torch.from_numpy(arr[:len(good)]),
                        labels=label_tensor([rows[i][1] for i in good]),
                        paths=[rows[i][0] for i in good], bad=[tuple(b) for b in meta["bad"]])


class CacheNoRoom(OSError):
    """The disk could not reserve a new cache entry's space: the caller decodes without the cache instead."""


def _reserve(path: Path) -> None:
    """Allocate every block of the (sparse) file now: writing into a memory map whose blocks the disk cannot
    provide kills the process with SIGBUS, where a failed reservation is an error to handle (CacheNoRoom)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:  # (macOS, Windows) write it out instead
            zeros = bytes(1 << 20)
            for start in range(0, size, len(zeros)):
                os.pwrite(fd, zeros[:min(len(zeros), size - start)], start)
    finally:
        os.close(fd)


def _reserved_map(tmp: Path, shape: tuple[int, ...]) -> np.memmap:
    """A new uint8 .npy memory map at tmp, readable by its owner only, its space reserved on the disk (or
    CacheNoRoom, and no file)."""
    os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))  # open_memmap keeps this mode
    os.chmod(tmp, 0o600)  # (an orphan of the same name may have had another)
    np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)  # the header and a sparse file
    try:
        _reserve(tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CacheNoRoom(f"no room for the cache entry on its disk ({exc.strerror or exc})") from None
    return np.load(tmp, mmap_mode="r+")


def _fill(cache_dir: Path, key: str, root: Path, rows: list[tuple[str, int]], pre: Preprocessing, workers: int,
          on_progress: Callable[[int], None] | None) -> None:
    """Decode in chunks straight into a memory-mapped temp file, so a split larger than memory can be cached.
    The file has a row per listed file; bad files leave rows unused at its end (the metadata lists the good).
    Its space is reserved before anything is written (CacheNoRoom when the disk has none), and it is readable by
    its owner only (a cache holds the user's images)."""
    data_file, meta_file = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    tmp = temp_name(data_file)  # <key>.npy.<pid>.<thread>.tmp: the lock holder's orphan glob finds a killed one's
    out = _reserved_map(tmp, (len(rows), 3, pre.img_size, pre.img_size))
    good, reasons = [], []
    for start, arrays, kept, chunk_reasons in decode_in_chunks([root / rel for rel, _ in rows], pre, workers,
                                                               CHUNK, on_progress):
        out[len(good):len(good) + len(kept)] = arrays.transpose(0, 3, 1, 2)
        good += [start + i for i in kept]
        reasons += chunk_reasons
    out.flush()
    del out
    os.replace(tmp, data_file)
    bad = [(rows[i][0], reasons[i]) for i in range(len(rows)) if reasons[i]]
    write_text_atomic(meta_file, json.dumps({"good": good, "bad": bad, "n": len(rows), "img_size": pre.img_size,
                                             "resize": pre.resize, "root": str(root)}), mode=0o600)


def cache_entries(cache_dir: Path | None = None) -> list[dict]:
    """One row per entry (key, images, img_size, root, bytes, last_used as a timestamp), then one row per
    orphaned temp file (a filler killed mid-write: "orphan": True), for `imgclass cache info`."""
    d = Path(cache_dir) if cache_dir else default_cache_dir()
    if not d.is_dir():
        return []
    rows = []
    for data_file in sorted(d.glob("*.npy")):
        meta_file = data_file.with_suffix(".json")
        try:
            meta = json.loads(meta_file.read_text())
            used = meta_file.stat().st_mtime
        except (OSError, ValueError):
            meta, used = {}, data_file.stat().st_mtime
        rows.append({"key": data_file.stem, "images": len(meta.get("good", [])) if isinstance(meta, dict) else 0,
                     "img_size": meta.get("img_size") if isinstance(meta, dict) else None,
                     "root": meta.get("root") if isinstance(meta, dict) else None,
                     "bytes": data_file.stat().st_size + (meta_file.stat().st_size if meta_file.is_file() else 0),
                     "last_used": used, "orphan": False})
    for tmp in sorted(d.glob("*.tmp")):
        if _orphaned(d, tmp):
            rows.append({"key": tmp.name, "images": 0, "img_size": None, "root": None,
                         "bytes": tmp.stat().st_size, "last_used": tmp.stat().st_mtime, "orphan": True})
    return rows


def _orphaned(d: Path, tmp: Path) -> bool:
    """A temp file whose entry's lock nobody holds: its writer is gone."""
    try:
        with FileLock(d / f"{tmp.name.split('.', 1)[0]}.lock", timeout=0):
            return True
    except Timeout:
        return False


def clear_cache(cache_dir: Path | None = None, older_than: float | None = None) -> tuple[int, int]:
    """Remove entries (all, or those unused for older_than seconds) and orphaned temp files; entries being
    filled right now are left alone. Returns (files removed, bytes freed)."""
    import time
    d = Path(cache_dir) if cache_dir else default_cache_dir()
    removed = freed = 0
    now = time.time()
    for row in cache_entries(d):
        if not row["orphan"] and older_than is not None and now - row["last_used"] < older_than:
            continue
        lock = d / f"{row['key'].split('.', 1)[0]}.lock"
        try:
            with FileLock(lock, timeout=0):
                names = [row["key"]] if row["orphan"] else [f"{row['key']}.npy", f"{row['key']}.json"]
                for name in names:
                    if (d / name).is_file():
                        (d / name).unlink()
                        removed += 1
                freed += row["bytes"]
            lock.unlink(missing_ok=True)
        except Timeout:  # another process is filling this entry: not ours to remove now (a reader that
            continue        # has it mapped keeps its pages: unlinking a mapped file is safe on POSIX)
    return removed, freed
