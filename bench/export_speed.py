"""Export formats side by side on the photo default: images/s at batch 1 and 16, test accuracy and file size of
each engine, all measured in one run on this machine, with the CPU (and its VNNI/AMX/bf16) named.

    python bench/export_speed.py [--data fashion|hymenoptera] [--epochs 3] [--run RUN]

The model: the photo default, EfficientNet-Lite0 at 224 px from its ImageNet weights, fine-tuned by `imgclass
train --model timm:tf_efficientnet_lite0 --pretrained --img-size 224 --finetune top --epochs 3` (the head stage, then the
top blocks; fashion: fashion_hier's product photos by subCategory, split 80/10/10 stratified, as
bench/label_errors.py does; hymenoptera: its own train/val folders). --run reuses a run folder instead.
(A first try, `--time-budget 3m --model timm:tf_efficientnet_lite0` without --pretrained, trained Lite0 from
scratch for one epoch: 3% test accuracy. A named model starts from scratch unless --pretrained is given.) Engines: PyTorch float32 and bf16 (where the CPU has
native bf16), ONNX Runtime float32 and int8, OpenVINO float32, bf16 and int8, TFLite (LiteRT) float32, each made
by `imgclass export` (the int8 ones refused beyond a 1-point drop, so a refusal is a result too). Speed is the
best of 3 interleaved rounds of 2 s per engine, on test images already decoded (the model's cost alone).
Targets (issue 30): the fastest int8 >= 2x ONNX Runtime float32 at batch 16, with <= 1 point accuracy lost.
"""
from __future__ import annotations

import argparse
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch

from common import machine
from label_errors import link_folder, photo_items
from transfer_time_to_accuracy import extract

ROUNDS, SECONDS = 3, 2.0


class TfliteEngine:
    """A .tflite export in LiteRT's interpreter, NHWC, kept allocated between calls of the same batch size."""
    runtime, precision = "tflite", "float32"

    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter
        self.interpreter = Interpreter(model_path=str(path), num_threads=torch.get_num_threads())
        self.index = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.batch != len(images):
            self.interpreter.resize_tensor_input(self.index, [len(images), *images.shape[2:], 3])
            self.interpreter.allocate_tensors()
            self.batch = len(images)
        self.interpreter.set_tensor(self.index, images.float().permute(0, 2, 3, 1).contiguous().numpy())
        self.interpreter.invoke()
        return torch.from_numpy(self.interpreter.get_tensor(self.output).copy())


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def prepare(args, tmp: Path) -> Path:
    import subprocess
    import sys
    import time
    if args.run:
        return Path(args.run)
    if args.data == "hymenoptera":
        root = extract("hymenoptera.tar.gz")
    else:
        items, classes = photo_items("fashion")
        root = tmp / "fashion"
        link_folder(items, classes, root, share=0.0)
    run = tmp / "run"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "imgclass", "train", str(root), "--model", "timm:tf_efficientnet_lite0",
                    "--pretrained", "--img-size", "224", "--finetune", "top", "--epochs", str(args.epochs), "--out", str(run),
                    "--cache-dir", str(tmp / "cache"), "--no-verbose"], check=True)
    print(f"trained {args.data} in {(time.perf_counter() - started) / 60:.1f} min")
    return run


def engines(run: Path, tmp: Path) -> tuple[dict, dict, dict]:
    """{name: engine}, {name: file size}, {name: export seconds or refusal}."""
    import time

    import imgclass
    from imgclass.core.errors import UserError
    from imgclass.models.inference import cpu_has_native_bf16
    from imgclass.inference.engines import OnnxEngine, OpenVinoEngine
    predictor = imgclass.load(run, device="cpu")
    size = predictor.pre.img_size
    found = {"torch float32": predictor.torch_engine(bf16=False)}
    if cpu_has_native_bf16():
        found["torch bf16"] = predictor.torch_engine(bf16=True)
    sizes, notes = {"torch float32": (run / "model.safetensors").stat().st_size}, {}
    sizes["torch bf16"] = sizes["torch float32"]
    plan = [("onnx float32", "onnx", {}, "m.onnx"), ("onnx int8", "onnx", {"quantize": "int8"}, "m.int8.onnx"),
            ("openvino float32", "openvino", {}, "ov"), ("openvino int8", "openvino", {"quantize": "int8"}, "ov8"),
            ("tflite float32", "tflite", {}, "m.tflite")]
    for name, fmt, options, out in plan:
        started = time.perf_counter()
        try:
            exported = imgclass.export(run, fmt, tmp / out, **options)
        except UserError as exc:
            notes[name] = f"refused: {exc}"
            print(f"{name}: {exc}")
            continue
        notes[name] = f"exported in {time.perf_counter() - started:.0f} s"
        print("\n".join(exported.lines()))
        sizes[name] = size_of(tmp / out)
        if fmt == "onnx":
            found[name] = OnnxEngine(tmp / out, size, precision=name.split()[1])
        elif fmt == "openvino":
            found[name] = OpenVinoEngine(tmp / out, size, name.split()[1])
            if name == "openvino float32" and cpu_has_native_bf16():
                found["openvino bf16"] = OpenVinoEngine(tmp / out, size, "bf16")
                sizes["openvino bf16"] = sizes[name]
        else:
            found[name] = TfliteEngine(tmp / out)
    return found, sizes, notes


def accuracy(predictor, run: Path, found: dict) -> tuple[dict, int]:
    from imgclass.inference import quantize
    root, rows = quantize.run_split(predictor, predictor.path, "test")
    answers, labels = {name: [] for name in found}, []
    for images, batch_labels in quantize.decoded(predictor, root, rows, batch=16):
        labels += batch_labels
        for name, engine in found.items():
            answers[name] += engine(images).numpy().argmax(1).tolist()
    truth = np.asarray(labels)
    return {name: float((np.asarray(a) == truth).mean()) for name, a in answers.items()}, len(labels)


def speed(found: dict, images: torch.Tensor) -> dict:
    from imgclass.inference.engines import images_per_second
    rates = {(name, b): 0.0 for name in found for b in (1, 16)}
    for _ in range(ROUNDS):  # interleaved, so a burst of load elsewhere does not favour one engine
        for name, engine in found.items():
            for b in (1, 16):
                rates[name, b] = max(rates[name, b], images_per_second(engine, images[:b], SECONDS / ROUNDS))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=["fashion", "hymenoptera"], default="fashion")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--run", help="an existing run folder to export instead of training one")
    args = parser.parse_args()
    import imgclass
    from imgclass.models.inference import cpu_label
    from imgclass.inference.graph import parity_batch
    print(machine())
    print(f"CPU: {cpu_label()}")
    with tempfile.TemporaryDirectory() as tmp:
        run = prepare(args, Path(tmp))
        predictor = imgclass.load(run, device="cpu")
        print(f"model: {predictor.header.arch.name} at {predictor.pre.img_size} px, TTA {predictor.tta}, "
              f"{len(predictor.classes)} classes")
        found, sizes, notes = engines(run, Path(tmp))
        scores, n = accuracy(predictor, run, found)
        rates = speed(found, parity_batch(predictor, predictor.path))
    reference = rates["onnx float32", 16]
    print(f"\n{date.today()}, {cpu_label()}, {torch.get_num_threads()} threads; test split: {n} images\n")
    print("| engine | images/s, batch 1 | images/s, batch 16 | x ONNX Runtime float32 (batch 16) | test accuracy "
          "| size (MB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in found:
        print(f"| {name} | {rates[name, 1]:.1f} | {rates[name, 16]:.1f} | {rates[name, 16] / reference:.2f} | "
              f"{scores[name]:.4f} | {sizes[name] / 1e6:.1f} |")
    for name, note in notes.items():
        if note.startswith("refused"):
            print(f"| {name} | {note} | | | | |")
    int8 = [name for name in found if name.endswith("int8")]
    if int8:
        best = max(int8, key=lambda k: rates[k, 16])
        lost = (scores["onnx float32"] - scores[best]) * 100
        print(f"\nfastest int8: {best}, {rates[best, 16] / reference:.2f}x ONNX Runtime float32 at batch 16 "
              f"(target >= 2x), {lost:+.2f} points of test accuracy lost (target <= 1)")


if __name__ == "__main__":
    main()
