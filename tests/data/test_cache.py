import os

import torch

from imgclass.data import cache as cache_mod
from imgclass.data import images as images_mod
from imgclass.data.cache import load_cached
from imgclass.data.images import load_split
from imgclass.data.preprocess import Preprocessing

from helpers import make_class_folders


def rows_of(root):
    return [(f"{c}/img{j}.png", i) for i, c in enumerate(("cat", "dog", "fish")) for j in range(6)]


def test_hit_on_second_load_and_same_pixels(tmp_path, monkeypatch):
    root = make_class_folders(tmp_path / "d", per_class=6)
    pre = Preprocessing(img_size=8)
    calls = []
    real = images_mod.decode_many
    monkeypatch.setattr(images_mod, "decode_many", lambda *a, **k: calls.append(1) or real(*a, **k))
    first, hit1 = load_cached(root, rows_of(root), pre, tmp_path / "cache")
    second, hit2 = load_cached(root, rows_of(root), pre, tmp_path / "cache")
    assert (hit1, hit2) == (False, True) and len(calls) == 1     # no decoding the second time
    direct = load_split(root, rows_of(root), pre)
    assert torch.equal(first.images, direct.images) and torch.equal(second.images, direct.images)
    assert torch.equal(second.labels, direct.labels) and second.paths == direct.paths
    assert isinstance(second.images, torch.Tensor) and second.images.shape == (18, 3, 8, 8)


def test_invalidated_when_a_file_or_the_preprocessing_changes(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=6)
    pre = Preprocessing(img_size=8)
    load_cached(root, rows_of(root), pre, tmp_path / "cache")
    assert load_cached(root, rows_of(root), pre, tmp_path / "cache")[1]
    target = root / "cat" / "img0.png"
    from PIL import Image
    Image.new("RGB", (12, 12), (0, 0, 0)).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    again, hit = load_cached(root, rows_of(root), pre, tmp_path / "cache")
    assert not hit and int(again.images[0].max()) == 0        # the new, black image is used
    assert not load_cached(root, rows_of(root), Preprocessing(img_size=8, resize="pad"), tmp_path / "cache")[1]


def test_bad_files_remembered(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=6)
    (root / "cat" / "img1.png").write_text("broken")
    pre = Preprocessing(img_size=8)
    a, _ = load_cached(root, rows_of(root), pre, tmp_path / "cache")
    b, hit = load_cached(root, rows_of(root), pre, tmp_path / "cache")
    assert hit and a.bad == b.bad and b.bad[0][0] == "cat/img1.png" and len(b) == 17


def test_second_training_run_decodes_nothing(tmp_path, monkeypatch):
    import imgclass
    from helpers import FAST
    data = make_class_folders(tmp_path / "data", per_class=8)
    imgclass.train(data, out=str(tmp_path / "a"), **dict(FAST, epochs=1))
    monkeypatch.setattr(images_mod, "decode_many",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    imgclass.train(data, out=str(tmp_path / "b"), **dict(FAST, epochs=1))


def test_filled_chunk_by_chunk_with_bad_files_in_between(tmp_path, monkeypatch):
    # the cache is decoded in chunks straight into its memory map (a split larger than memory still caches)
    monkeypatch.setattr(cache_mod, "CHUNK", 4)
    root = make_class_folders(tmp_path / "d", per_class=6)
    for bad in ("cat/img3.png", "dog/img0.png", "fish/img5.png"):
        (root / bad).write_text("broken")
    pre = Preprocessing(img_size=8)
    direct = load_split(root, rows_of(root), pre)
    for expect_hit in (False, True):
        cached, hit = load_cached(root, rows_of(root), pre, tmp_path / "cache")
        assert hit == expect_hit and len(cached) == 15
        assert torch.equal(cached.images, direct.images) and torch.equal(cached.labels, direct.labels)
        assert cached.paths == direct.paths and cached.bad == direct.bad


def test_fits_on_disk_reads_the_free_space(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, 0, 2 << 30))
    assert cache_mod.fits_on_disk(tmp_path / "not" / "yet", 1000, 32)            # 3 MB + 1 GiB margin < 2 GiB
    assert not cache_mod.fits_on_disk(tmp_path, 400_000, 32)                      # 1.2 GB + 1 GiB > 2 GiB


import pytest  # noqa: E402


@pytest.mark.parametrize("damage", ["truncate", "garble_meta", "wrong_shape"])
def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path, capsys, damage):
    """Issue 14, item 9: a truncated cache file used to give a traceback on every later run."""
    import json
    import numpy as np
    root = make_class_folders(tmp_path / "data", per_class=6)
    rows, pre, cdir = rows_of(root), Preprocessing(img_size=8), tmp_path / "cache"
    direct = load_split(root, rows, pre)                      # (the cache's own maps see the damage below)
    _, hit = load_cached(root, rows, pre, cdir)
    assert not hit
    data_file = next(cdir.glob("*.npy"))
    meta_file = data_file.with_suffix(".json")
    if damage == "truncate":
        data_file.write_bytes(data_file.read_bytes()[:len(data_file.read_bytes()) // 2])
    elif damage == "garble_meta":
        meta_file.write_text('{"good": [0, 1')
    else:
        np.save(data_file, np.zeros((2, 3, 8, 8), dtype=np.uint8))
    again, hit = load_cached(root, rows, pre, cdir)
    err = capsys.readouterr().err
    assert not hit and "cache entry" in err and "is rebuilt" in err and len(err.strip().splitlines()) == 1
    assert torch.equal(again.images, direct.images) and again.paths == direct.paths
    third, hit = load_cached(root, rows, pre, cdir)            # the rebuilt entry is a normal hit
    assert hit and torch.equal(third.images, direct.images)
    assert json.loads(meta_file.read_text())["n"] == len(rows)


# issue 14, item 9: one filler per entry, orphans cleaned, `imgclass cache info|clear`

FILLER = """
import sys, time
from imgclass.data import cache
from imgclass.data.preprocess import Preprocessing
real = cache.decode_in_chunks
def slow(*a, **k):  # a slow decode, so the two processes overlap for sure
    print("decoding", flush=True)
    time.sleep(1.5)
    yield from real(*a, **k)
cache.decode_in_chunks = slow
rows = [(f"{c}/img{j}.png", i) for i, c in enumerate(("cat", "dog", "fish")) for j in range(6)]
_, hit = cache.load_cached(__import__("pathlib").Path(sys.argv[1]), rows, Preprocessing(img_size=8), sys.argv[2])
print("hit" if hit else "filled", flush=True)
"""


def test_two_processes_fill_one_entry_once(tmp_path):
    import subprocess
    import sys
    root = make_class_folders(tmp_path / "d", per_class=6)
    cmd = [sys.executable, "-c", FILLER, str(root), str(tmp_path / "cache")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = sorted(p.communicate(timeout=120)[0].split() for p in procs)
    assert outs == [["decoding", "filled"], ["hit"]]   # one decoded, the other waited and mapped its entry
    assert [p.returncode for p in procs] == [0, 0]
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_a_killed_fillers_temp_file_is_cleaned_up(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=6)
    pre, cache_dir = Preprocessing(img_size=8), tmp_path / "cache"
    key = cache_mod.cache_key(root, rows_of(root), pre)
    cache_dir.mkdir()
    orphan = cache_dir / f"{key}.npy.999999.tmp"       # what a SIGKILLed filler leaves
    orphan.write_bytes(b"\0" * 1000)
    other = cache_dir / "0123abcd.npy.999998.tmp"       # another entry's orphan
    other.write_bytes(b"\0" * 10)
    info = cache_mod.cache_entries(cache_dir)
    assert {r["key"] for r in info if r["orphan"]} == {orphan.name, other.name}
    _, hit = load_cached(root, rows_of(root), pre, cache_dir)
    assert not hit and not orphan.exists()               # the next filler of that entry removes it
    assert cache_mod.clear_cache(cache_dir, older_than=10 ** 9)[0] == 1 and not other.exists()  # orphans always go
    assert [r["images"] for r in cache_mod.cache_entries(cache_dir)] == [18]  # the recent entry stays


def test_cache_command_lists_and_clears_by_age(tmp_path, capsys):
    import time as clock
    from imgclass.cli import main
    root = make_class_folders(tmp_path / "d", per_class=6)
    cache_dir = tmp_path / "cache"
    for size in (8, 10):
        load_cached(root, rows_of(root), Preprocessing(img_size=size), cache_dir)
    old = [r for r in cache_mod.cache_entries(cache_dir) if r["img_size"] == 8][0]
    month_ago = clock.time() - 40 * 86400
    os.utime(cache_dir / f"{old['key']}.json", (month_ago, month_ago))
    assert main(["cache", "info", "--dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "18 images at 8 px" in out and "18 images at 10 px" in out and "2 entries" in out
    expected_mb = sum(f.stat().st_size for f in cache_dir.glob("*.npy")) + sum(
        f.stat().st_size for f in cache_dir.glob("*.json"))
    assert f"{expected_mb / 2**20:.1f} MB in all" in out
    assert main(["cache", "clear", "--older-than", "30d", "--dir", str(cache_dir)]) == 0
    assert "removed 2 file(s)" in capsys.readouterr().out
    left = cache_mod.cache_entries(cache_dir)
    assert [r["img_size"] for r in left] == [10]
    assert load_cached(root, rows_of(root), Preprocessing(img_size=10), cache_dir)[1]   # still a hit
    assert main(["cache", "clear", "--dir", str(cache_dir)]) == 0
    assert cache_mod.cache_entries(cache_dir) == []


def test_a_disk_that_cannot_hold_the_entry_means_streaming_not_sigbus(tmp_path, monkeypatch, imgclass_log):
    """The entry's space is reserved before the memory map is written (a sparse file on a full disk killed the
    process with SIGBUS): when the reservation fails, training decodes in worker processes instead, with a
    warning, and leaves no temporary file."""
    import errno

    import imgclass
    from helpers import FAST

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    data = make_class_folders(tmp_path / "data", per_class=8)
    cache_dir = tmp_path / "cache"
    run = imgclass.train(data, out=str(tmp_path / "run"), cache_dir=str(cache_dir), **dict(FAST, epochs=1))
    assert run.history and (run.dir / "model.safetensors").is_file()
    assert any(level == "WARNING" and "no room for the cache entry" in message for level, message in imgclass_log)
    assert not list(cache_dir.glob("*.tmp")) and not list(cache_dir.glob("*.npy"))


def test_cache_files_are_readable_by_their_owner_only(tmp_path):
    root = make_class_folders(tmp_path / "d", per_class=6)
    cache_dir = tmp_path / "cache"
    load_cached(root, rows_of(root), Preprocessing(img_size=8), cache_dir)
    files = list(cache_dir.glob("*.npy")) + list(cache_dir.glob("*.json"))
    assert len(files) == 2 and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert cache_dir.stat().st_mode & 0o777 == 0o700


def test_lr_find_honours_no_cache_and_stream(tmp_path):
    """lr-find prepares its data as train does: --no-cache and --stream write nothing to the cache."""
    import imgclass
    from helpers import FAST
    data = make_class_folders(tmp_path / "data", per_class=8)
    options = dict(FAST, steps=5)
    options.pop("evaluate")
    for flags in ({"cache": False}, {"stream": True}):
        cache_dir = tmp_path / f"cache-{next(iter(flags))}"
        imgclass.lr_find(data, plot=str(tmp_path / "lr.png"), cache_dir=str(cache_dir), **flags, **options)
        assert not cache_dir.exists() or not any(cache_dir.iterdir()), flags
    imgclass.lr_find(data, plot=str(tmp_path / "lr.png"), cache_dir=str(tmp_path / "cache"), **options)
    assert list((tmp_path / "cache").glob("*.npy"))
