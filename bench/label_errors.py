"""Suspected label errors against planted ones: flip 5% of the TRAINING labels of a photo set at random (seeded),
then measure how many flips `imgclass check --label-issues` finds (precision and recall at cleanlab's default
selection and at the top 5% of its ranking), against fastai's top_losses (the training images of highest loss
under a model trained on the noisy labels, measured in the same run), and the test accuracy recovered by training
without the flagged images (`train --exclude`) against training on the noisy set and on the clean one.

    python bench/label_errors.py fashion [--budget 3m] [--share 0.05]

fashion: fashion_hier's product photos, labelled by subCategory, split 80/10/10 (stratified, seed 0) into a
folder of symbolic links (train/, val/, test/), the flips in train/ only: the test split is the same clean one
for every run. hymenoptera: its train/ and val/ (val scores).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from common import machine, train_in_budget
from transfer_time_to_accuracy import extract


def photo_items(name: str) -> tuple[list[tuple[str, Path, str]], list[str]]:
    """(split, file, label) of every image, and the classes."""
    from sklearn.model_selection import train_test_split
    if name == "hymenoptera":
        root = extract("hymenoptera.tar.gz")
        items = [(split, p, p.parent.name) for split in ("train", "val") for p in sorted((root / split).rglob("*"))
                 if p.is_file()]
        return items, sorted({i[2] for i in items})
    root = extract("fashion_hier.tar.gz")
    rows = list(csv.DictReader((root / "labels.csv").open()))
    counts = {}
    for r in rows:
        counts[r["subCategory"]] = counts.get(r["subCategory"], 0) + 1
    rows = [r for r in rows if counts[r["subCategory"]] >= 10]  # stratifiable into three splits
    labels = [r["subCategory"] for r in rows]
    train, rest = train_test_split(rows, test_size=0.2, stratify=labels, random_state=0)
    val, test = train_test_split(rest, test_size=0.5, stratify=[r["subCategory"] for r in rest], random_state=0)
    items = [(s, root / r["file_path"], r["subCategory"]) for s, part in (("train", train), ("val", val), ("test", test))
             for r in part]
    return items, sorted(set(labels))


def link_folder(items, classes, folder: Path, share: float, seed: int = 0) -> dict[str, tuple[str, str]]:
    """DATA/<split>/<class>/<file> links with `share` of the training images filed under another class (uniform);
    returns {relative path: (given label, true label)} of the flips."""
    rng = np.random.default_rng(seed)
    train = [i for i, it in enumerate(items) if it[0] == "train"]
    flip = set(rng.choice(train, int(round(share * len(train))), replace=False).tolist())
    flips = {}
    for i, (split, path, label) in enumerate(items):
        given = label
        if i in flip:
            given = str(rng.choice([c for c in classes if c != label]))
        rel = f"{split}/{given}/{path.name}"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path, folder / rel)
        if given != label:
            flips[rel] = (given, label)
    return flips


def scored(run: Path, split: str) -> float:
    import json
    return json.loads((run / "results.json").read_text())["metrics"][split]["accuracy"]


def top_losses_of(run: Path, data: Path, paths: list[str], labels: list[str]) -> np.ndarray:
    """fastai's top_losses: the loss of each training image under the model trained on the noisy labels."""
    import imgclass
    predictor = imgclass.load(run, device="cpu")
    probs, _ = predictor.predict_proba([data / p for p in paths])
    index = {c: i for i, c in enumerate(predictor.classes)}
    y = np.array([index[label] for label in labels])
    return -np.log(np.clip(np.nan_to_num(probs)[np.arange(len(y)), y], 1e-12, None))


def precision_recall(flagged: set[str], flips: dict) -> str:
    hit = len(flagged & set(flips))
    return f"precision {hit / max(1, len(flagged)):.3f}, recall {hit / max(1, len(flips)):.3f} ({len(flagged)} flagged)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", choices=["fashion", "hymenoptera"])
    parser.add_argument("--budget", default="3m")
    parser.add_argument("--share", type=float, default=0.05)
    args = parser.parse_args()
    print(machine())
    from cleanlab.rank import get_label_quality_scores

    import imgclass
    from imgclass.curation.label_issues import out_of_fold_probabilities
    items, classes = photo_items(args.dataset)
    split = "test" if args.dataset == "fashion" else "val"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        flips = link_folder(items, classes, tmp / "noisy", args.share)
        link_folder(items, classes, tmp / "clean", 0.0)
        started = time.perf_counter()
        report = imgclass.check(tmp / "noisy", label_issues=True, out=tmp / "check")
        check_seconds = time.perf_counter() - started
        # the images of the train/ folder (imgclass may carve its test split from them: they count all the same)
        flagged = {i["path"] for i in report.label_issues if i["path"].startswith("train/")}
        # the same embeddings and out-of-fold probabilities as check's (cache hit), ranked by cleanlab's quality score
        emb = imgclass.embed("timm:tf_efficientnet_lite0", tmp / "noisy", pretrained=True)
        names = sorted(set(emb.labels))
        y = np.array([names.index(label) for label in emb.labels])
        quality = get_label_quality_scores(y, out_of_fold_probabilities(emb.vectors, y, seed=101).probs)
        train_rows = [i for i, p in enumerate(emb.paths) if p.startswith("train/")]
        n_top = len(flips)
        top_quality = {emb.paths[i] for i in sorted(train_rows, key=lambda i: quality[i])[:n_top]}
        print(f"{len(flips)} of {len(train_rows)} training labels flipped; check --label-issues took "
              f"{check_seconds:.0f}s")
        print(f"  cleanlab (default selection, train split): {precision_recall(flagged, flips)}")
        print(f"  cleanlab ranking, top {args.share:.0%}: {precision_recall(top_quality, flips)}")
        exclude = tmp / "exclude.csv"
        exclude.write_text("path\n" + "".join(f"{p}\n" for p in sorted(flagged)))
        runs = {}
        for name, data, options in (("noisy", tmp / "noisy", []), ("cleaned (--exclude)", tmp / "noisy",
                                                                      ["--exclude", str(exclude)]),
                                    ("clean", tmp / "clean", [])):
            run, _, wall = train_in_budget(data, args.budget, tmp / name.split()[0], options)
            runs[name] = run
            print(f"  train {name}: {split} accuracy {scored(run, split):.4f} ({wall / 60:.1f} min)")
        train_paths = [emb.paths[i] for i in train_rows]
        loss = top_losses_of(runs["noisy"], tmp / "noisy", train_paths, [emb.labels[i] for i in train_rows])
        top_loss = {train_paths[i] for i in np.argsort(-loss, kind="stable")[:n_top]}
        print(f"  fastai top_losses (model trained on the noisy labels), top {args.share:.0%}: "
              f"{precision_recall(top_loss, flips)}")
    print(f"command: python bench/label_errors.py {args.dataset} --budget {args.budget} --share {args.share}; "
          f"{date.today()}")


if __name__ == "__main__":
    sys.exit(main())
