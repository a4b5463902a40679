"""WebDataset-style shards (issue 31, item 5): images read from .tar shards as a stream, named tar://MEMBER::SHARD,
answered as predict answers the same images from a folder; bad shards and members fail clearly."""
import io
import tarfile

import fsspec
import numpy as np
import pytest
from PIL import Image

import imgclass
from imgclass.data import shards as sh
from imgclass.core.errors import UserError

from helpers import tar_header


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    """Two shards of WebDataset samples (KEY.png + KEY.cls), and the same images in a folder."""
    root = tmp_path_factory.mktemp("shards")
    folder = root / "folder"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for s in range(2):
        mode = "w:gz" if s else "w"   # a plain and a gzipped shard
        with tarfile.open(root / f"train-{s:06d}.tar{'.gz' if s else ''}", mode) as tar:
            for k in range(6):
                buf = io.BytesIO()
                Image.fromarray(rng.randint(0, 256, (12, 14, 3), dtype=np.uint8)).save(buf, "PNG")
                (folder / f"{s}-{k}.png").write_bytes(buf.getvalue())
                add(tar, f"s{s}/{k:04d}.png", buf.getvalue())
                add(tar, f"s{s}/{k:04d}.cls", b"1")
            if s == 0:
                add(tar, "s0/broken.jpg", b"\xff\xd8 not a jpeg")
    return root, folder


def test_shards_answer_as_the_same_images_in_a_folder(trained_run, shard_set):
    root, folder = shard_set
    pattern = str(root / "train-{000000.tar,000001.tar.gz}")
    got = imgclass.predict(trained_run, pattern, runtime="torch", precision="float32")
    want = imgclass.predict(trained_run, folder, runtime="torch", precision="float32")
    assert len(got) == 13                                   # 12 images and the broken one; the .cls members skipped
    first = str(root / "train-000000.tar")
    assert got[0]["image"] == f"tar://s0/0000.png::{first}"
    with fsspec.open(got[0]["image"], "rb") as fh:          # the name opens the member again
        assert fh.read() == (folder / "0-0.png").read_bytes()
    broken = [a for a in got if "error" in a]
    assert [a["image"] for a in broken] == [f"tar://s0/broken.jpg::{first}"] and "not an image" in broken[0]["error"]
    scored = [a for a in got if "error" not in a]
    by_name = {a["image"].rsplit("/", 1)[1]: a for a in want}
    for answer, name in zip(scored, [f"{s}-{k}.png" for s in range(2) for k in range(6)]):
        assert [t["label"] for t in answer["top_k"]] == [t["label"] for t in by_name[name]["top_k"]]
        np.testing.assert_allclose([t["probability"] for t in answer["top_k"]],
                                   [t["probability"] for t in by_name[name]["top_k"]], atol=1e-6)


def test_chunks_keep_the_order_and_a_large_member_fails_its_row(shard_set, monkeypatch):
    root, folder = shard_set
    assert sh.is_shard(root / "train-*") and sh.is_shard(root / "train-{000000..000009}.tar")
    assert not sh.is_shard(folder) and not sh.is_shard(folder / "*.png")
    shards = sh.expand_shards(str(root / "train-*"))
    assert [s.rsplit("/", 1)[1] for s in shards] == ["train-000000.tar", "train-000001.tar.gz"]
    names = [n for batch, _ in sh.shard_batches(shards, 5) for n in batch]
    assert names == [n for n, _ in sh.shard_images(shards[0])] + [n for n, _ in sh.shard_images(shards[1])]
    monkeypatch.setattr(sh, "MAX_MEMBER_BYTES", 10)
    assert all(isinstance(item, str) and item.startswith("too large") for _, item in sh.shard_images(shards[0]))


def test_bad_shards_are_refused_or_fail_their_rows(trained_run, shard_set, tmp_path):
    root, folder = shard_set
    with pytest.raises(UserError, match="no such shard"):
        sh.expand_shards(str(tmp_path / "missing-{0..1}.tar"))
    with pytest.raises(UserError, match="no shards match"):
        sh.expand_shards(str(tmp_path / "none-*.tar"))
    with pytest.raises(UserError, match="not both"):
        imgclass.predict(trained_run, [str(root / "train-000000.tar"), str(folder)])
    cut = tmp_path / "cut.tar"                              # a shard cut off in the middle of its 4th image
    with tarfile.open(root / "train-000000.tar") as tar:
        fourth = next(m for m in tar.getmembers() if m.name == "s0/0003.png")
    cut.write_bytes((root / "train-000000.tar").read_bytes()[:fourth.offset_data + 100])
    got = imgclass.predict(trained_run, str(cut), runtime="torch")
    assert [a["image"] for a in got[:3]] == [f"tar://s0/{k:04d}.png::{cut}" for k in range(3)]
    assert all("error" not in a for a in got[:3])
    assert got[3]["image"] == str(cut) and "damaged after its last readable member" in got[3]["error"]
    assert len(got) == 4
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 20)   # one bad shard fails its own row
    got = imgclass.predict(trained_run, [str(tmp_path / "junk.tar"), "memory://nowhere/gone.tar",
                                         str(root / "train-000000.tar")], runtime="torch")
    assert set(got[0]) == {"image", "error"} and got[0]["image"] == str(tmp_path / "junk.tar")
    assert "cannot open the shard: not a tar archive" in got[0]["error"]
    assert got[1]["image"] == "memory://nowhere/gone.tar" and "cannot open the shard" in got[1]["error"]
    assert len(got) == 2 + 7 and all("top_k" in a for a in got[2:8])


def test_any_fsspec_url_and_the_command_line(trained_run, shard_set, capsys):
    """A shard on another filesystem (fsspec's in-memory one standing in for s3:// or https://), and
    `imgclass predict RUN SHARD.tar --format json` as a user runs it."""
    root, _ = shard_set
    local = str(root / "train-000000.tar")
    with fsspec.open("memory://bucket/train-000000.tar", "wb") as fh:
        fh.write((root / "train-000000.tar").read_bytes())
    remote = imgclass.predict(trained_run, "memory://bucket/train-000000.tar", runtime="torch")
    here = imgclass.predict(trained_run, local, runtime="torch")
    assert [a["image"] for a in remote] == [a["image"].replace(local, "memory://bucket/train-000000.tar")
                                            for a in here]
    assert [a.get("top_k") for a in remote] == [a.get("top_k") for a in here]
    from imgclass.cli import main
    import json
    assert main(["predict", str(trained_run), local, "--format", "json", "--runtime", "torch"]) == 0
    assert [a["image"] for a in json.loads(capsys.readouterr().out)] == [a["image"] for a in here]


def _png(colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


def test_names_from_pax_and_gnu_headers_are_read_as_tarfile_writes_them(tmp_path):
    """The reader (data/shards.py, in place of tarfile's streaming mode) reads what tarfile writes: long names in pax
    and in GNU headers, gzip, directories and other members skipped."""
    long = "a" * 120 + "/" + "b" * 110 + ".png"
    for fmt, suffix in ((tarfile.PAX_FORMAT, ".tar"), (tarfile.GNU_FORMAT, ".tar.gz")):
        path = tmp_path / f"s{fmt}{suffix}"
        with tarfile.open(path, "w:gz" if suffix == ".tar.gz" else "w", format=fmt) as tar:
            dir_info = tarfile.TarInfo("x")
            dir_info.type = tarfile.DIRTYPE
            tar.addfile(dir_info)
            add(tar, long, _png())
            add(tar, "x/label.cls", b"3")
            add(tar, "x/é.jpg", _png((0, 0, 255)))
        got = list(sh.shard_images(str(path)))
        assert [name for name, _ in got] == [sh.member_url(str(path), long), sh.member_url(str(path), "x/é.jpg")]
        assert all(isinstance(data, bytes) and data[:4] == b"\x89PNG" for _, data in got)


def test_a_pax_header_bomb_fails_its_row_without_reading_it(tmp_path):
    """issue 40, item 1: a pax header claiming 512 MiB (zeros, a few hundred kB gzipped) was read whole by tarfile
    before the loop saw a member; here it is refused by its size, with tracemalloc's peak far below it."""
    import gzip
    import tracemalloc
    claimed = 512 * 2**20
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz:
        gz.write(tar_header(b"ok.png", len(_png()), b"0") + _png() + bytes(-len(_png()) % 512))
        gz.write(tar_header(b"././@PaxHeader", claimed, b"x"))
        zeros = bytes(2**20)
        for _ in range(claimed // len(zeros)):
            gz.write(zeros)
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(raw.getvalue())
    tracemalloc.start()
    got = list(sh.shard_images(str(bomb)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got[0][0] == sh.member_url(str(bomb), "ok.png") and isinstance(got[0][1], bytes)
    assert got[1][0] == str(bomb) and "pax header of 536870912 bytes" in got[1][1] and len(got) == 2
    assert peak < 64 * 2**20


def test_an_invalid_header_after_the_first_member_is_an_error_row(tmp_path):
    """issue 40, item 8: tarfile ended the stream without a word at an invalid header after the first member."""
    good = tar_header(b"a.png", len(_png()), b"0") + _png() + bytes(-len(_png()) % 512)
    broken = bytearray(tar_header(b"b.png", len(_png()), b"0"))
    broken[0:1] = b"z"  # the checksum no longer matches
    path = tmp_path / "damaged.tar"
    path.write_bytes(good + bytes(broken) + _png() + bytes(1024))
    got = list(sh.shard_images(str(path)))
    assert got[0][0] == sh.member_url(str(path), "a.png") and isinstance(got[0][1], bytes)
    assert got[1] == (str(path), got[1][1]) and "damaged after its last readable member" in got[1][1]
    assert "checksum" in got[1][1] and len(got) == 2


def test_a_chunk_holds_a_bounded_number_of_bytes(tmp_path):
    """issue 40, item 1: 256 members of up to 64 MiB made a 16 GiB chunk; a chunk now ends before the member that
    would take it over max_bytes."""
    path = tmp_path / "big.tar"
    members = [bytes(300_000) for _ in range(10)]
    with tarfile.open(path, "w") as tar:
        for k, data in enumerate(members):
            add(tar, f"{k}.png", data)
    chunks = list(sh.shard_batches([str(path)], size=256, max_bytes=1_000_000))
    assert [len(names) for names, _ in chunks] == [3, 3, 3, 1]
    assert all(sum(len(i) for i in items) <= 1_000_000 for _, items in chunks)
    assert [len(c) for c in sh.bounded_chunks([("a", bytes(2_000_000)), ("b", "why"), ("c", b"x")], 2, 1000)] == [1, 2]
