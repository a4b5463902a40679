"""A number per image on real photos: plain `imgclass train DATA --labels labels.csv --regression --time-budget B`
(the default: an ImageNet EfficientNet-Lite fine-tuned with one output, Huber loss on standardised targets) against
two references measured in the same run on the same split:
- predicting the training mean for every image (what any model must beat by a wide margin);
- a ridge probe of the same frozen backbone: scikit-learn's Ridge on the run's own pretrained backbone's frozen
  features (its size and preprocessing), fitted on the train split, its alpha chosen on the validation split (the
  earlier reference, lite0 at 224 px refitted on train + val, is printed beside it).

    python bench/regression_mall.py --budget 5m

Data: ../shared/datasets/mall_crowd_count.tar.gz (1,200 frames of one mall camera, the number of people in each).
Consecutive frames are near-copies, so the split is by frame number, never at random (the labels CSV gets a split
column): frames 1-1200 train, 1201-1600 validate, 1601-2000 test. Target: test MAE at least 10% below the probe's
and far below the training mean's.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

from common import machine, train_in_budget
from transfer_time_to_accuracy import extract, frozen_features

TRAIN_LAST, VAL_LAST = 1200, 1600  # frame numbers: train up to the first, validate up to the second, test the rest


def labels_with_split(root: Path, out: Path) -> Path:
    """labels.csv with a split column by frame number (the digits of the file name)."""
    rows = list(csv.DictReader((root / "labels.csv").open()))
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "target", "split"])
        for r in rows:
            frame = int(re.sub(r"\D", "", Path(r["file"]).stem))
            writer.writerow([r["file"], r["target"],
                             "train" if frame <= TRAIN_LAST else "val" if frame <= VAL_LAST else "test"])
    return out


ALPHAS = np.logspace(-1, 3, 9)  # ridge's penalty, chosen on validation: 0.1 to 1000, two steps per decade


def ridge_probe(run: Path, own_backbone: bool, refit_on_val: bool) -> tuple[float, float, str]:
    """(test MAE, the alpha chosen on validation, what was probed): scikit-learn's Ridge on frozen features of the
    run's own split.

    The target's reference (own_backbone, not refit_on_val) is the run's own backbone with its own preprocessing,
    fitted on the train split as the model is (validation only chooses alpha, as it only chooses the model's best
    epoch): the rule of this folder's other probes. The earlier reference (lite0 at 224 px, refitted on train + val:
    969 frames, the 400 closest in time to the test frames among them, where the model trains on 731) is printed
    beside it."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_absolute_error
    from imgclass.models.modelfile import read_header
    resize = read_header(run / "model.safetensors").preprocessing.resize
    feats, parts, probed = frozen_features(run, ("train", "val", "test"), resize, own_backbone)
    y = {s: np.array([float(r["label"]) for r in rows]) for s, rows in parts.items()}
    alpha = min(ALPHAS, key=lambda a: mean_absolute_error(
        y["val"], Ridge(alpha=a).fit(feats["train"], y["train"]).predict(feats["val"])))
    x_fit, y_fit = feats["train"], y["train"]
    if refit_on_val:
        x_fit, y_fit = np.concatenate([feats["train"], feats["val"]]), np.concatenate([y["train"], y["val"]])
    model = Ridge(alpha=alpha).fit(x_fit, y_fit)
    return float(mean_absolute_error(y["test"], model.predict(feats["test"]))), float(alpha), probed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", default="5m")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `imgclass train` options")
    args = ap.parse_args()
    root = extract("mall_crowd_count.tar.gz")
    with tempfile.TemporaryDirectory() as tmp:
        labels = labels_with_split(root, Path(tmp) / "labels.csv")
        options = ["--labels", str(labels), "--label-column", "target", "--regression"] + args.extra
        out, proc, wall = train_in_budget(root, args.budget, Path(tmp), options)
        m = json.loads((out / "eval" / "test" / "metrics.json").read_text())
        results = json.loads((out / "results.json").read_text())
        probe_mae, alpha, probed = ridge_probe(out, own_backbone=True, refit_on_val=False)
        old_mae, old_alpha, old_probed = ridge_probe(out, own_backbone=False, refit_on_val=True)
    from imgclass.training.config import parse_duration
    budget = parse_duration(args.budget)
    choice = next((line for line in proc.stderr.splitlines() if line.startswith("model auto")), "")
    print(f"date {date.today()}  machine: {machine()}")
    print(f"command: imgclass train mall_crowd_count --labels labels.csv (split by frame) --label-column target "
          f"--regression --time-budget {args.budget} {' '.join(args.extra)}")
    print(choice)
    for line in proc.stderr.splitlines():  # what the budget planner chose, and the head stage's and each epoch's scores
        if line.startswith(("time budget", "stage 1", "head ")) or " val " in line:
            print("  " + line.strip()[:160])
    print(f"wall clock {wall / 60:.2f} min (budget {budget / 60:.0f} min: {'MET' if wall <= budget else 'MISSED'}); "
          f"{results['epochs_run']} epochs; test n={m['n']}")
    print(f"{'':56s} {'test MAE':>9s} {'x imgclass':>10s}")
    for name, mae in (("imgclass", m["mae"]), ("predict the training mean", m["baseline_mae"]),
                      (f"ridge probe of {probed}, train (alpha {alpha:.3g})", probe_mae),
                      (f"earlier reference: {old_probed}, train+val (alpha {old_alpha:.3g})", old_mae)):
        print(f"{name:56s} {mae:9.3f} {mae / m['mae']:10.2f}")
    print(f"imgclass: RMSE {m['rmse']:.3f}, R² {m['r2']:.3f}, Spearman {m['spearman']:.3f}")
    beat = m["mae"] <= 0.9 * probe_mae and m["mae"] <= 0.5 * m["baseline_mae"]
    print(f"target (MAE <= 0.9 x its own backbone's probe's and <= 0.5 x the mean's): {'MET' if beat else 'MISSED'} "
          f"({100 * (1 - m['mae'] / probe_mae):.1f}% below the probe; {100 * (1 - m['mae'] / old_mae):.1f}% below "
          "the earlier reference)")


if __name__ == "__main__":
    main()
