"""`predict --ray` against `predict` in one process, on the same photos, measured in one run on this machine.

    python bench/predict_ray.py [--images 1000] [--rounds 2]

The model: the photo default (EfficientNet-Lite0 at 224 px, its ImageNet backbone, a 10-class head:
common.photo_model), run as predict runs it (--runtime auto: the fastest measured engine, its export made once
before the timings). The photos: camera-sized 640 x 480 JPEGs (common.photo_jpeg). Timed from the call to the
last answer, best of --rounds: one process; Ray with 1 actor (2 threads); Ray with 2 actors (1 thread each). Ray's
start (its processes, the actors loading the model) is timed apart, and the images/s of each phase reported, so
that a plan for N nodes can be read off: decode, model and Ray's own cost per image.
Target (issue 31): Ray >= 0.9x one process on this machine.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

from common import machine, photo_jpeg, photo_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import ray

    import imgclass
    from imgclass.models.inference import cpu_label
    from imgclass.prediction.ray_predict import ray_predict
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i in range(args.images):
            (folder / f"{i:05d}.jpg").write_bytes(photo_jpeg(i))
        model = photo_model(Path(tmp) / "model.safetensors")
        imgclass.predict(model, folder)  # the runtime's export and timings, made once (as any first job pays)
        timings: dict[str, float] = {}

        def best(name, fn):
            for _ in range(args.rounds):
                started = time.perf_counter()
                answers = fn()
                took = time.perf_counter() - started
                timings[name] = min(timings.get(name, took), took)
            assert len(answers) == args.images
            return answers

        one = best("one process", lambda: imgclass.predict(model, folder))
        for workers in (1, 2):
            started = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            timings[f"ray start ({workers} actor(s))"] = time.perf_counter() - started
            got = best(f"ray, {workers} actor(s)", lambda: ray_predict(model, [str(folder)], workers=workers))
            ray.shutdown()
            same = sum(a["top_k"][0]["label"] == b["top_k"][0]["label"] for a, b in zip(one, got))
            print(f"ray with {workers} actor(s): {same}/{len(one)} top labels equal to one process")
    reference = args.images / timings["one process"]
    print(f"\n{date.today()}, {cpu_label()}; {args.images} photos of 640 x 480, best of {args.rounds}\n")
    print("| how | seconds | images/s | x one process |")
    print("| --- | --- | --- | --- |")
    for name, seconds in timings.items():
        if name.startswith("ray start"):
            print(f"| {name} | {seconds:.1f} | | |")
        else:
            rate = args.images / seconds
            print(f"| {name} | {seconds:.1f} | {rate:.1f} | {rate / reference:.2f} |")


if __name__ == "__main__":
    main()
