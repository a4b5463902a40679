"""Issue 40's Done means: `imgclass predict` on a folder of shards holding a pax-header bomb, a shard of 256 large
members and a cut shard answers the good images, fails the bad shards' rows, and peaks under 2 GB of RSS.

    .venv/bin/python bench/bad_shards_memory.py [--work DIR]

The shards are written under --work (default a temporary folder; about 40 MB on disk, 8.6 GB once inflated):
- good.tar: 24 camera-sized JPEGs;
- bomb.tar.gz: one good image, then a pax header claiming 1 GiB (zeros, a few MB gzipped);
- large.tar.gz: 256 members, 128 of 60 MiB of zeros (each under the 64 MiB member limit, so read) and 128
  constant-colour 8,000 x 6,000 PNGs (48 megapixels each, under the pixel limit, so decoded);
- cut.tar: a good shard cut in the middle of its fifth member.
The CLI runs in a child process timed by /usr/bin/time -v (its maximum resident set size is the peak RSS).
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import machine, photo_jpeg, photo_model  # noqa: E402
from helpers import tar_header  # noqa: E402 - the crafted tar header the shard tests use

LIMIT = 2 * 10**9


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path) -> int:
    """The four shards; returns how many images in them should be answered (the 48-megapixel PNGs are images under
    the pixel limit, so they are answered too)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = [photo_jpeg(k) for k in range(24)]
    with tarfile.open(folder / "good.tar", "w") as tar:
        for k, data in enumerate(good):
            add(tar, f"{k:04d}.jpg", data)
    with gzip.open(folder / "bomb.tar.gz", "wb", compresslevel=1) as gz:
        gz.write(tar_header(b"ok.jpg", len(good[0]), b"0") + good[0] + bytes(-len(good[0]) % 512))
        gz.write(tar_header(b"././@PaxHeader", 2**30, b"x"))
        zeros = bytes(2**20)
        for _ in range(2**10):
            gz.write(zeros)
    buf = io.BytesIO()
    Image.new("RGB", (8000, 6000), (90, 120, 30)).save(buf, "PNG")
    huge_png = buf.getvalue()
    zeros = bytes(60 * 2**20)
    with tarfile.open(folder / "large.tar.gz", "w:gz", compresslevel=1) as tar:
        for k in range(256):
            add(tar, f"{k:04d}.{'jpg' if k % 2 else 'png'}", zeros if k % 2 else huge_png)
    with tarfile.open(folder / "whole.tar", "w") as tar:
        for k, data in enumerate(good[:8]):
            add(tar, f"{k:04d}.jpg", data)
    whole = (folder / "whole.tar").read_bytes()
    (folder / "whole.tar").unlink()
    offsets = [m.offset_data for m in tarfile.open(fileobj=io.BytesIO(whole))]
    (folder / "cut.tar").write_bytes(whole[:offsets[4] + 1000])
    return len(good) + 1 + 128 + 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bad-shards-"))
    good = write_shards(work / "shards")
    model = photo_model(work / "model.safetensors")
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "imgclass", "predict", str(model),
               str(work / "shards" / "*.tar*"), "--format", "json", "--runtime", "torch"]
    done = subprocess.run(command, capture_output=True, text=True)
    rss_kb = next(int(line.split(":")[1]) for line in done.stderr.splitlines() if "Maximum resident" in line)
    wall = next(line.split(": ", 1)[1] for line in done.stderr.splitlines() if "Elapsed (wall" in line)
    answers = json.loads(done.stdout)
    scored = [a for a in answers if "error" not in a]
    failed = [a for a in answers if "error" in a]
    print(machine())
    print(f"exit {done.returncode}; {len(scored)} scored (expected {good}), {len(failed)} error rows; "
          f"peak RSS {rss_kb / 1e6:.2f} GB (limit {LIMIT / 1e9:.0f} GB); wall {wall}")
    reasons: dict[str, int] = {}
    for a in failed:
        key = a["error"].split(":")[0][:60]
        reasons[key] = reasons.get(key, 0) + 1
    for key, n in sorted(reasons.items()):
        print(f"  {n:4d} x {key}")
    bad_rows = {a["image"].rsplit("/", 1)[-1] for a in failed if not a["image"].startswith("tar://")}
    ok = (done.returncode == 0 and len(scored) == good and len(failed) == 130
          and bad_rows == {"bomb.tar.gz", "cut.tar"} and rss_kb * 1000 < LIMIT)
    print("MET" if ok else "MISSED")


if __name__ == "__main__":
    main()
