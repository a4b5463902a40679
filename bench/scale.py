"""Cost that grows linearly (issue 41, item 5): images/s and peak RSS of check, one training epoch from the
decoded cache, predict and embed, for N small JPEGs, N from 10,000 up.

    .venv/bin/python bench/scale.py --sizes 10000 100000 300000 [--work DIR]

Each N is a fresh folder of 10 class folders of 32 x 32 JPEGs (smooth gradients, distinct per image), written once
under --work (default ~/.cache/imgclass-bench/scale). Each command runs in its own process (peak RSS, and its
anonymous part: see timed):
- check: `imgclass check ROOT --json J` (decodes every file, hashes, sizes);
- train epoch: `imgclass train ROOT --model fast --img-size 32 --epochs 1 --no-evaluate --cache-dir C` twice, the
  second from the decoded cache; its epoch's seconds from metrics.csv (images/s over the training split), its RSS
  the whole process's;
- predict: `imgclass predict RUN ROOT --format csv --runtime torch > /dev/null` with the second run's model;
- embed: `imgclass embed RUN ROOT --out E.npy`.
Targets: images/s within 20% from the smallest N to the largest for each command; peak RSS of predict and embed
within 20% across N. The table prints each against the smallest N's.

A command's wall clock holds a fixed start-up (Python, torch, the model: 3-8 s) that a larger N spreads thinner, so
whole-command images/s rises with N. The steady state is also printed: check, predict and embed run once more on a
set of SMALL_N images in the same N's work, and (N - SMALL_N) / (wall at N - wall at SMALL_N) is what each further
image costs, start-up cancelled (the epoch's own images/s is timed inside the loop already).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_DIR, machine  # noqa: E402

CLASSES = 10
SMALL_N = 1_000  # the set whose wall clock stands for a command's start-up (steady state: the difference to it)


def write_set(root: Path, n: int) -> Path:
    """n JPEGs of 32 x 32 in CLASSES folders (kept between runs: a marker file says the set is whole)."""
    done = root / ".complete"
    if done.is_file():
        return root
    rng = np.random.RandomState(n)
    yy, xx = np.mgrid[0:32, 0:32]
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a, b, base = rng.uniform(1, 8, 3), rng.uniform(1, 8, 3), rng.randint(0, 256, 3)
        img = np.stack([(xx * a[k] + yy * b[k] + base[k]) % 256 for k in range(3)], -1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        (root / f"class{i % CLASSES}" / f"{i:07d}.jpg").write_bytes(buf.getvalue())
    done.write_text(str(n))
    return root


def timed(command: list[str], stdout=subprocess.DEVNULL) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in GB, peak anonymous RSS in GB) of one command in its own process. Peak RSS is the
    kernel's (wait4's ru_maxrss); it counts the pages of the memory-mapped decoded cache a command reads (file-backed,
    clean: the kernel drops them under pressure). The anonymous part (/proc's RssAnon, sampled every 50 ms) is the
    memory a command holds beyond such files: what "memory stays flat beyond the cache" asks about."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=stdout, stderr=err)
        anon = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                with open(f"/proc/{proc.pid}/status") as fh:
                    anon = max(anon, next((int(line.split()[1]) for line in fh if line.startswith("RssAnon:")), 0))
            except OSError:
                pass
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{err.read().decode(errors='replace')[-3000:]}")
    return wall, usage.ru_maxrss / 1e6, anon / 1e6


def measure(root: Path, n: int, work: Path, small: Path) -> dict[str, tuple[float, float, float]]:
    """{command: (images/s, peak RSS GB, peak anonymous RSS GB)} for one N, with "... steady" rows: images/s beyond
    start-up (the
    difference to the same command on the SMALL_N set)."""
    cli = [sys.executable, "-m", "imgclass"]
    out: dict[str, tuple[float, float]] = {}

    def both(command: str, args, stdout=subprocess.DEVNULL) -> None:
        wall, rss, anon = timed(cli + args(root), stdout=stdout)
        small_wall, _, _ = timed(cli + args(small), stdout=stdout)
        out[command] = (n / wall, rss, anon)
        out[f"{command} steady"] = ((n - SMALL_N) / max(1e-9, wall - small_wall), rss, anon)

    both("check", lambda folder: ["check", str(folder), "--json", str(work / "check.json")])
    cache = work / "cache"
    train = cli + ["train", str(root), "--model", "fast", "--img-size", "32", "--epochs", "1", "--no-evaluate",
                   "--cache-dir", str(cache), "--no-tensorboard"]
    timed(train + ["--out", str(work / "first")])
    _, rss, anon = timed(train + ["--out", str(work / "run")])
    rows = list(csv.DictReader((work / "run" / "metrics.csv").open()))
    trained = sum(1 for row in csv.DictReader((work / "run" / "splits.csv").open()) if row["split"] == "train")
    out["train epoch (cached)"] = (trained / float(rows[-1]["seconds"]), rss, anon)
    with open(os.devnull, "w") as null:
        both("predict", lambda folder: ["predict", str(work / "run"), str(folder), "--format", "csv", "--runtime",
                                        "torch"], stdout=null)
    both("embed", lambda folder: ["embed", str(work / "run"), str(folder), "--out", str(work / "emb.npy")])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    parser.add_argument("--work", type=Path, default=BENCH_DIR / "scale")
    args = parser.parse_args()
    print(machine())
    results: dict[int, dict[str, tuple[float, float, float]]] = {}
    small = write_set(args.work / f"set-{SMALL_N}", SMALL_N)
    for n in args.sizes:
        started = time.perf_counter()
        root = write_set(args.work / f"set-{n}", n)
        made = time.perf_counter() - started
        work = args.work / f"work-{n}"
        subprocess.run(["rm", "-rf", str(work)], check=True)
        work.mkdir(parents=True)
        results[n] = measure(root, n, work, small)
        print(f"N={n:,}: set ready in {made:.0f}s; " + "; ".join(
            f"{k} {v[0]:,.0f} img/s {v[1]:.2f} GB ({v[2]:.2f} anonymous)" for k, v in results[n].items()), flush=True)
    first = args.sizes[0]
    print(f"\n| command | N | images/s | x N={first:,} | peak RSS GB | x N={first:,} | anonymous GB | x N={first:,} |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for command in results[first]:
        for n in args.sizes:
            speed, rss, anon = results[n][command]
            base_speed, base_rss, base_anon = results[first][command]
            print(f"| {command} | {n:,} | {speed:,.0f} | {speed / base_speed:.2f} | {rss:.2f} | {rss / base_rss:.2f} "
                  f"| {anon:.2f} | {anon / base_anon:.2f} |")


if __name__ == "__main__":
    main()
