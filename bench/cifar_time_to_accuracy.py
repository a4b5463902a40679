"""Time to accuracy on CIFAR-10 with plain `imgclass train` (the default fast path), wall clock
including decoding (a cold, empty cache), against a target.

    python bench/cifar_time_to_accuracy.py --budget 15m --target 0.90
    python bench/cifar_time_to_accuracy.py --budget 30m --target 0.94 --airbench94

--airbench94 then trains airbench94's own recipe (bench/airbench94_reference.py) on the same machine and data and
prints both, with the ratio of their wall clocks and the accuracy each reached.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from common import cifar10, machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="15m")
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--airbench94", action="store_true", help="also run airbench94's recipe, the reference")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `imgclass train` options")
    args = ap.parse_args()
    data = cifar10()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "imgclass", "train", str(data), "--time-budget", args.budget, "--out", str(out),
               "--cache-dir", str(Path(tmp) / "cache"), "--no-verbose"] + args.extra
        started = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - started
        results = json.loads((out / "results.json").read_text())
        cfg = (out / "config.yaml").read_text()
    acc = results["metrics"]["test"]["accuracy"]
    from imgclass.training.config import parse_duration
    budget = parse_duration(args.budget)
    print(f"date {date.today()}  machine: {machine()}")
    print(f"command: imgclass train CIFAR10 --time-budget {args.budget} {' '.join(args.extra)}")
    print(f"test accuracy {acc:.4f} (target {args.target:.2f}: {'MET' if acc >= args.target else 'MISSED'}); "
          f"wall clock {wall / 60:.1f} min incl. decoding (budget {budget / 60:.0f} min: "
          f"{'MET' if wall <= budget else 'MISSED'}); ratio wall/budget {wall / budget:.2f}")
    print(f"epochs {results['epochs_run']}, decode {results['decode_seconds']:.0f}s, train {results['train_seconds']:.0f}s")
    print("config:", " ".join(line for line in cfg.splitlines() if line.split(":")[0] in
                              ("model", "model_args", "img_size", "epochs", "batch_size", "lr", "tta")))
    if args.airbench94:
        from airbench94_reference import train_and_score
        from imgclass.models.inference import cpu_has_native_bf16
        ref = train_and_score(data, cpu_has_native_bf16())
        ref_wall = ref["decode_s"] + ref["train_s"] + ref["score_s"]
        print(f"airbench94's recipe, same machine and data ({'bf16' if ref['bf16'] else 'float32'}, {ref['epochs']} "
              f"epochs on all 50,000 training images): test accuracy {ref['accuracy']:.4f} in {ref_wall / 60:.1f} min "
              f"(decode {ref['decode_s']:.0f}s, train {ref['train_s']:.0f}s, score {ref['score_s']:.0f}s)")
        print(f"imgclass / airbench94: wall clock {wall / ref_wall:.2f}x, accuracy "
              f"{100 * (acc - ref['accuracy']):+.2f} points")


if __name__ == "__main__":
    main()
