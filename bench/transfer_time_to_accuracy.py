"""Time to accuracy on photos with plain `imgclass train DATA --time-budget B` (the default: an ImageNet
EfficientNet-Lite fine-tuned), wall clock including Python's start, decoding (a cold, empty cache) and
the final report, against a target and against a linear probe of the same backbone measured in the
same run on the same split (logistic regression on frozen EfficientNet-Lite0 features at 224 px).

    python bench/transfer_time_to_accuracy.py hymenoptera --budget 3m --target 0.96
    python bench/transfer_time_to_accuracy.py fashion --budget 5m --target 0.97

hymenoptera: train/ and val/ (the PyTorch transfer-learning tutorial's ants and bees); scored on val.
fashion: fashion_hier's 3,221 product photos, labels.csv's subCategory (a long tail); scored on the
test split imgclass carves (10%, stratified, seed 101).
"""
from __future__ import annotations

import argparse
import csv
import json
import tarfile
import tempfile
import time
from datetime import date
from pathlib import Path

from common import BENCH_DIR, DATASETS, machine, train_in_budget

SETS = {"hymenoptera": ("hymenoptera.tar.gz", "val", []),
        "fashion": ("fashion_hier.tar.gz", "test", ["--labels", "{root}/labels.csv", "--label-column", "subCategory"])}


def extract(archive: str) -> Path:
    root = BENCH_DIR / archive.split(".")[0]
    if not root.is_dir():
        src = DATASETS / archive
        if not src.is_file():
            raise SystemExit(f"archive not found at {src}")
        root.mkdir(parents=True)
        with tarfile.open(src) as tar:
            tar.extractall(root.parent, filter="data")
    return root


def frozen_features(run: Path, splits: tuple[str, ...], resize: str = "crop", own_backbone: bool = False
                    ) -> tuple[dict, dict, str]:
    """({split: N x D frozen backbone features}, {split: splits.csv rows}, what was probed) of a run's images (float32,
    no augmentation): what a linear probe of the backbone trains and scores on. By default EfficientNet-Lite0 at 224
    px with `resize`; with own_backbone, the run's own pretrained backbone with the run's own preprocessing (size,
    resize, mean and std from its model file), so the probe and the model see the same pixels."""
    import numpy as np
    import timm
    import torch
    import yaml
    from imgclass.data.preprocess import Preprocessing
    from imgclass.models.modelfile import read_header
    from imgclass.models.pretrained import pretrained_state
    name, pre = "timm:tf_efficientnet_lite0", Preprocessing(img_size=224, resize=resize, mean=(0.5, 0.5, 0.5),
                                                            std=(0.5, 0.5, 0.5))
    if own_backbone:
        header = read_header(run / "model.safetensors")
        if not header.arch.name.startswith("timm:"):
            raise SystemExit(f"the run's model {header.arch.name} has no pretrained backbone to probe")
        name, pre = header.arch.name, header.preprocessing
    net = timm.create_model(name.removeprefix("timm:"), num_classes=0)
    net.load_state_dict(pretrained_state(name)[0])
    net.eval()
    root = Path(yaml.safe_load((run / "config.yaml").read_text())["data"])
    rows = list(csv.DictReader((run / "splits.csv").open()))
    feats, parts = {}, {}
    with torch.no_grad():
        for split in splits:
            part = [r for r in rows if r["split"] == split]
            out = []
            for i in range(0, len(part), 16):
                x = torch.from_numpy(np.stack([pre.load(root / r["path"]) for r in part[i:i + 16]])).permute(0, 3, 1, 2)
                out.append(net(pre.normalize(x)).numpy())
            feats[split], parts[split] = np.concatenate(out), part
    return feats, parts, f"{name.removeprefix('timm:tf_efficientnet_')} at {pre.img_size} px"


def linear_probe(run: Path, score_split: str) -> tuple[float, float]:
    """(accuracy, seconds): scikit-learn's logistic regression on frozen lite0 features, trained on the run's
    train split, scored on score_split."""
    from sklearn.linear_model import LogisticRegression
    started = time.perf_counter()
    feats, parts, _ = frozen_features(run, ("train", score_split))
    labels = {s: [r["label"] for r in rows] for s, rows in parts.items()}
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(feats["train"], labels["train"])
    acc = float(clf.score(feats[score_split], labels[score_split]))
    return acc, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", choices=sorted(SETS))
    ap.add_argument("--budget", default="3m")
    ap.add_argument("--target", type=float, default=0.96)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `imgclass train` options")
    args = ap.parse_args()
    archive, score_split, options = SETS[args.dataset]
    root = extract(archive)
    options = [o.format(root=root) for o in options]
    with tempfile.TemporaryDirectory() as tmp:
        out, proc, wall = train_in_budget(root, args.budget, Path(tmp), options + args.extra)
        results = json.loads((out / "results.json").read_text())
        cfg = (out / "config.yaml").read_text()
        probe_acc, probe_s = linear_probe(out, score_split)
    choice = next((line for line in proc.stderr.splitlines() if line.startswith("model auto")), "")
    acc = results["metrics"][score_split]["accuracy"]
    from imgclass.training.config import parse_duration
    budget = parse_duration(args.budget)
    print(f"date {date.today()}  machine: {machine()}")
    print(f"command: imgclass train {args.dataset} --time-budget {args.budget} {' '.join(options + args.extra)}")
    print(choice)
    for line in proc.stderr.splitlines():  # what the budget chose for the stages, and the best epoch
        if line.strip().startswith(("time budget", "top stage", "activations of the backbone")):
            print("  " + line.strip())
    print(f"  best epoch {results.get('best_epoch')} (0: the head stage's model); stop: {results.get('stop_reason')}")
    print(f"{score_split} accuracy {acc:.4f} (n={results['metrics'][score_split]['n']}; target {args.target:.2f}: "
          f"{'MET' if acc >= args.target else 'MISSED'}); wall clock {wall / 60:.2f} min incl. start-up, decoding "
          f"and report (budget {budget / 60:.0f} min: {'MET' if wall <= budget else 'MISSED'}); "
          f"ratio wall/budget {wall / budget:.2f}")
    print(f"linear probe of lite0 (reference, same split): {probe_acc:.4f} in {probe_s:.0f}s; "
          f"imgclass - probe = {100 * (acc - probe_acc):+.1f} points")
    other = results["total_seconds"] - results["decode_seconds"] - results["head_seconds"] - results["train_seconds"]
    print(f"stages: decode {results['decode_seconds']:.0f}s, head stage (features + head) "
          f"{results['head_seconds']:.0f}s, fine-tuning {results['train_seconds']:.0f}s ({results['epochs_run']} epochs), planning + final scoring + "
          f"report {other:.0f}s, Python start-up {wall - results['total_seconds']:.0f}s")
    print("config:", " ".join(line for line in cfg.splitlines() if line.split(":")[0] in
                              ("model", "img_size", "epochs", "batch_size", "lr", "head_epochs", "tta")))


if __name__ == "__main__":
    main()
