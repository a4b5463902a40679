"""`predict --ray` against `predict` in one process, on the same photos, measured in one run on this machine.

    python bench/predict_ray.py [--images 1000 10000] [--rounds 2]

The model: the photo default (EfficientNet-Lite0 at 224 px, its ImageNet backbone, a 10-class head:
common.photo_model), run as predict runs it (--runtime auto: the fastest measured engine, its export made once
before the timings). The photos: camera-sized 640 x 480 JPEGs (common.photo_jpeg), the first N of them for each
size in --images. Timed from the call to the last answer, best of --rounds: one process; Ray with 1 actor (2
threads); Ray with 2 actors (1 thread each). Ray's own start (ray.init) is timed apart; what a job pays to start
its actors (a fresh process importing PyTorch and loading the chosen engine) is inside each Ray timing, so the
sizes show it as a fixed cost, and the largest size the rate a long job reaches.
Target (issue 31): Ray >= 0.9x one process on this machine.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import date
from pathlib import Path

from common import machine, photo_jpeg, photo_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import ray

    import imgclass
    from imgclass.models.inference import cpu_label
    from imgclass.prediction.ray_predict import ray_predict
    print(machine())
    sizes = sorted(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        photos = [Path(tmp) / f"{i:05d}.jpg" for i in range(sizes[-1])]
        for i, path in enumerate(photos):
            path.write_bytes(photo_jpeg(i))
        folders = {}
        for n in sizes:
            folders[n] = Path(tmp) / f"photos-{n}"
            folders[n].mkdir()
            for path in photos[:n]:
                os.link(path, folders[n] / path.name)
        model = photo_model(Path(tmp) / "model.safetensors")
        imgclass.predict(model, folders[sizes[-1]])  # the runtime's exports and timings, made once (any first job pays)
        timings: dict[tuple[str, int], float] = {}

        def best(name, n, fn):
            for _ in range(args.rounds):
                started = time.perf_counter()
                answers = fn()
                took = time.perf_counter() - started
                timings[name, n] = min(timings.get((name, n), took), took)
            assert len(answers) == n
            return answers

        one = {n: best("one process", n, lambda: imgclass.predict(model, folders[n])) for n in sizes}
        starts = {}
        for workers in (1, 2):
            started = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            starts[workers] = time.perf_counter() - started
            for n in sizes:
                got = best(f"`--ray`, {workers} actor{'s' if workers > 1 else ''}", n,
                           lambda: ray_predict(model, [str(folders[n])], workers=workers))
                same = sum(a["top_k"][0]["label"] == b["top_k"][0]["label"] for a, b in zip(one[n], got))
                print(f"ray with {workers} actor(s), {n} photos: {same}/{n} top labels equal to one process")
            ray.shutdown()
    print(f"\n{date.today()}, {cpu_label()}; photos of 640 x 480, best of {args.rounds}; "
          f"ray.init took {starts[1]:.1f} s and {starts[2]:.1f} s (not counted)\n")
    print("| how | " + " | ".join(f"{n} photos: s | images/s | x one process" for n in sizes) + " |")
    print("| --- |" + " --- | --- | --- |" * len(sizes))
    for name in dict.fromkeys(name for name, _ in timings):
        cells = []
        for n in sizes:
            rate = n / timings[name, n]
            cells.append(f"{timings[name, n]:.1f} | {rate:.1f} | {rate / (n / timings['one process', n]):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
