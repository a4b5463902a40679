"""`imgclass predict DIR` against the model's own throughput, in one run (issue 19).

On the photo default (EfficientNet-Lite0, ImageNet weights, 224 px; common.photo_model) and a folder of
generated 640 x 480 JPEGs: the runtime `predict` chooses (--runtime auto; a job this size exports to ONNX
once and times the candidates), then
- raw: that runtime on pre-decoded uint8 tensors, in predict's batches of 64 (no decoding at all);
- pipeline: imgclass.predict on the folder (listing, decoding in DECODE_WORKERS threads, scoring, top-k),
  warm like raw (the first, cold pass is printed too): target >= 0.8x raw;
- for context: eager PyTorch float32 on the same tensors, and decoding alone on one thread.

    python bench/predict_throughput.py [--images 1000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from common import PHOTO_MODEL, machine, photo_jpeg, photo_model


def rate(fn, n: int) -> float:
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    args = ap.parse_args()
    import imgclass
    from imgclass.data.preprocess import to_nchw
    from imgclass.inference import predictor as predictor_module
    from imgclass.inference.predictor import Predictor
    from imgclass.inference.runtime import choose_runtime
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "photos"
        folder.mkdir()
        for i in range(min(args.images, 50)):  # 50 distinct photos, repeated under other names
            (folder / f"{i:05d}.jpg").write_bytes(photo_jpeg(i))
        for i in range(50, args.images):
            (folder / f"{i:05d}.jpg").write_bytes((folder / f"{i % 50:05d}.jpg").read_bytes())
        model_file = photo_model(tmp / "model.safetensors")
        predictor = Predictor.load(model_file, "cpu")
        started = time.perf_counter()
        choice = choose_runtime(predictor, "auto", images=args.images)
        predictor.use(choice)
        note = choice.note
        choose_s = time.perf_counter() - started
        paths = sorted(folder.iterdir())
        decode_rate = rate(lambda: [predictor.pre.load(p) for p in paths[:200]], 200)
        pixels = to_nchw(np.stack([predictor.pre.load(p) for p in paths]))

        def score_all(engine):
            for i in range(0, len(pixels), 64):
                engine(pixels[i:i + 64])
        score_all(predictor.engine)  # warm-up
        raw = rate(lambda: score_all(predictor.engine), len(pixels))
        eager = predictor.torch_engine(bf16=False)
        eager_rate = rate(lambda: score_all(eager), len(pixels))
        results = []
        cold = rate(lambda: results.extend(imgclass.predict(predictor, [folder], top_k=3)), args.images)
        assert len(results) == args.images and all("top_k" in r for r in results)
        pipeline = rate(lambda: imgclass.predict(predictor, [folder], top_k=3), args.images)  # warm, like raw
    print(f"date {date.today()}  machine: {machine()}")
    print(f"command: python bench/predict_throughput.py --images {args.images}")
    print(f"model: {PHOTO_MODEL} at 224 px; {args.images} JPEGs of 640 x 480; decode workers "
          f"{predictor_module.DECODE_WORKERS}")
    print(f"{note}  (choosing took {choose_s:.1f} s: export and timing, once per model and machine)")
    print(f"decoding alone, one thread:          {decode_rate:7.1f} images/s")
    print(f"eager PyTorch float32, pre-decoded:  {eager_rate:7.1f} images/s")
    print(f"chosen runtime, pre-decoded (raw):   {raw:7.1f} images/s")
    print(f"imgclass.predict, first pass (cold): {cold:7.1f} images/s = {cold / raw:.2f}x raw")
    print(f"imgclass.predict on the folder:      {pipeline:7.1f} images/s = {pipeline / raw:.2f}x raw "
          f"(target >= 0.8x: {'MET' if pipeline / raw >= 0.8 else 'MISSED'}); "
          f"{pipeline / eager_rate:.2f}x eager float32 on pre-decoded tensors")


if __name__ == "__main__":
    main()
