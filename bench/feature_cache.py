"""Transfer learning on CIFAR-10: pretrain `resnet` on five classes (airplane, automobile, bird,
cat, deer), then fine-tune it on a small folder of the other five (dog, frog, horse, ship, truck).

Reports (1) the per-epoch time of the head stage with cached backbone features against
recomputing the frozen backbone every epoch (target >= 10x), and (2) test accuracy of
fine-tuning against training from scratch on the same folder with the same time budget.

    python bench/feature_cache.py [--pretrain-budget 6m --per-class 200 --budget 90s]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from common import cifar10, machine

SOURCE = ["airplane", "automobile", "bird", "cat", "deer"]
TARGET = ["dog", "frog", "horse", "ship", "truck"]


def subset(root: Path, out: Path, classes: list[str], per_class: int | None) -> Path:
    for split in ("train", "test"):
        for c in classes:
            (out / split / c).mkdir(parents=True, exist_ok=True)
            files = sorted((root / split / c).iterdir())
            if per_class and split == "train":
                files = files[:per_class]
            for f in files:
                os.symlink(f, out / split / c / f.name)
    return out


def imgclass_train(data: Path, out: Path, *args: str) -> dict:
    subprocess.run([sys.executable, "-m", "imgclass", "train", str(data), "--out", str(out), "--no-verbose",
                    "--no-evaluate", "--no-tensorboard", *args], check=True)
    return json.loads((out / "results.json").read_text())


def head_epoch_times(model_file: Path, data: Path, epochs: int = 3) -> tuple[float, float]:
    """Seconds per head epoch: on cached features, and recomputing the frozen backbone each epoch."""
    from imgclass.data.cache import load_cached
    from imgclass.data.find import find_images
    from imgclass.data.split import make_split
    from imgclass.models.modelfile import load_model
    from imgclass.models.tasks import SINGLE_LABEL
    from imgclass.models.inference import compute_features
    from imgclass.training.stages.transfer import set_trainable, train_head
    model, header = load_model(model_file)
    pre = header.preprocessing
    split, _ = make_split(find_images(data), 0.1, 0.0, 101)
    train, _ = load_cached(split.root, split.items["train"], pre, None)
    model.reset_head(len(split.classes))
    set_trainable(model.backbone, False)
    device = torch.device("cpu")
    started = time.perf_counter()
    feats = compute_features(model, train.images, pre, 256, device)
    once = time.perf_counter() - started
    rows = train_head(SINGLE_LABEL, model, feats, train.labels, None, None, epochs, 1e-3, 0.0, 0.1, 128, 0, device)
    cached = sum(r["seconds"] for r in rows) / epochs
    recompute = []
    for _ in range(epochs):  # the uncached way: the frozen backbone runs again every epoch
        started = time.perf_counter()
        feats = compute_features(model, train.images, pre, 256, device)
        train_head(SINGLE_LABEL, model, feats, train.labels, None, None, 1, 1e-3, 0.0, 0.1, 128, 0, device)
        recompute.append(time.perf_counter() - started)
    return cached, sum(recompute) / epochs, once


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrain-budget", default="6m")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--budget", default="90s")
    args = ap.parse_args()
    root = cifar10()
    common = ["--model", "resnet", "--model-args", "width=32,depth=1", "--img-size", "32"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = subset(root, tmp / "source", SOURCE, None)
        target = subset(root, tmp / "target", TARGET, args.per_class)
        pre = imgclass_train(source, tmp / "pretrain", *common, "--time-budget", args.pretrain_budget)
        model_file = tmp / "pretrain" / "model.safetensors"
        cached, recompute, once = head_epoch_times(model_file, target)
        tuned = imgclass_train(target, tmp / "tuned", *common, "--weights", str(model_file),
                               "--time-budget", args.budget)
        scratch = imgclass_train(target, tmp / "scratch", *common, "--time-budget", args.budget)
    print(f"date {date.today()}  machine: {machine()}")
    print(f"command: python bench/feature_cache.py --pretrain-budget {args.pretrain_budget} "
          f"--per-class {args.per_class} --budget {args.budget}")
    print(f"pretrained resnet(width 32, depth 1) on {', '.join(SOURCE)}: test accuracy "
          f"{pre['metrics']['test']['accuracy']:.4f}")
    print(f"head epoch: cached features {cached * 1000:.0f} ms, recomputing the frozen backbone {recompute * 1000:.0f} ms, "
          f"ratio {recompute / cached:.0f}x (target >= 10x: {'MET' if recompute / cached >= 10 else 'MISSED'}); "
          f"features computed once in {once:.1f}s")
    t, s = tuned["metrics"]["test"]["accuracy"], scratch["metrics"]["test"]["accuracy"]
    print(f"{args.per_class} images per class of {', '.join(TARGET)}, {args.budget} each: fine-tuned {t:.4f} vs "
          f"from scratch {s:.4f} test accuracy (difference {100 * (t - s):+.1f} points)")


if __name__ == "__main__":
    main()
