"""Unknown inputs: train on one photo set, feed another, and measure how well each out-of-distribution score
separates them: AUROC (in-distribution images against the others), and the share of unknowns rejected at the
threshold that accepts 95% of the validation images (how models/reject.py sets it).

    python bench/unknowns.py [--budget 3m] [--unknowns 600]

In distribution: hymenoptera (ants/bees; the model trained by `imgclass train --time-budget`; its val split sets
the thresholds, its val and test splits are the in-distribution images scored). Unknown: a seeded sample of
fashion_hier's product photos. Scores, higher meaning "known":
- max_probability: the calibrated maximum class probability (what imgclass stores and applies),
- energy: T * logsumexp(logits / T) (Liu et al. 2020), from the same logits,
- knn_k: cosine similarity to the k-th nearest training image in the model's embedding space (Sun et al. 2022).
"""
from __future__ import annotations

import argparse
import csv
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch

from common import machine, train_in_budget
from transfer_time_to_accuracy import extract


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", default="3m")
    parser.add_argument("--unknowns", type=int, default=600)
    args = parser.parse_args()
    print(machine())
    from sklearn.metrics import roc_auc_score

    import imgclass
    from imgclass.models.neighbours import exact_search, unit_rows
    from imgclass.data.images import load_split
    from imgclass.models.inference import compute_features, predict_logits
    known_root, unknown_root = extract("hymenoptera.tar.gz"), extract("fashion_hier.tar.gz")
    with tempfile.TemporaryDirectory() as tmp:
        run, _, wall = train_in_budget(known_root, args.budget, Path(tmp), [])
        predictor = imgclass.load(run, device="cpu")
        rows = list(csv.DictReader((run / "splits.csv").open()))
        print(f"trained on hymenoptera in {wall / 60:.1f} min: val accuracy "
              f"{predictor.header.metrics['val']['accuracy']:.4f}; stored rejection: {predictor.header.reject}")
        unknown = sorted((unknown_root / "images").rglob("*.jpg"))
        unknown = [unknown[i] for i in np.random.default_rng(0).choice(len(unknown), args.unknowns, replace=False)]
        sets = {name: load_split(known_root, [(r["path"], 0) for r in rows if r["split"] == name], predictor.pre)
                for name in ("train", "val", "test")}
        sets["unknown"] = load_split(unknown_root, [(p.relative_to(unknown_root).as_posix(), 0) for p in unknown],
                                     predictor.pre)
        t = predictor.temperature
        scores: dict[str, dict[str, np.ndarray]] = {}
        bank = None
        for name, part in sets.items():
            logits = predict_logits(predictor.model, part.images, predictor.pre, 64, torch.device("cpu"), predictor.tta)
            feats = unit_rows(compute_features(predictor.model, part.images, predictor.pre, 64,
                                               torch.device("cpu")).numpy())
            if name == "train":
                bank = feats
                continue
            s = {"max_probability": torch.softmax(logits / t, 1).max(1).values.numpy(),
                 "energy": (t * torch.logsumexp(logits / t, 1)).numpy()}
            _, sims = exact_search(bank, feats, 10)
            for k in (1, 5, 10):
                s[f"knn_{k}"] = sims[:, k - 1]
            scores[name] = s
        known = {k: np.concatenate([scores["val"][k], scores["test"][k]]) for k in scores["val"]}
        print(f"{len(known['energy'])} known images (val {len(sets['val'])}, test {len(sets['test'])}), "
              f"{len(sets['unknown'])} unknown (fashion_hier)")
        for k in known:
            y = np.r_[np.zeros(len(known[k])), np.ones(len(scores["unknown"][k]))]
            auroc = roc_auc_score(y, -np.r_[known[k], scores["unknown"][k]])
            threshold = np.sort(scores["val"][k])[int(np.floor(0.05 * len(scores["val"][k]) + 1e-9))]
            rejected = (scores["unknown"][k] < threshold).mean()
            kept = (scores["test"][k] >= threshold).mean()
            print(f"  {k:16s} AUROC {auroc:.4f}; at 95% val acceptance: unknowns rejected {rejected:.1%}, "
                  f"test images accepted {kept:.1%}")
        stored = predictor.header.reject  # what `predict --reject` applies: the rule the model file holds
        answers = predictor.predict([unknown_root / p for p in sets["unknown"].paths], reject=True)
        tested = predictor.predict([known_root / p for p in sets["test"].paths], reject=True)
        print(f"  stored rule ({stored.score}, k={stored.k}, {len(stored.bank)} training embeddings, threshold "
              f"{stored.threshold:.4f}) through predict --reject: unknowns rejected "
              f"{np.mean([a['unknown'] for a in answers]):.1%}, test images accepted "
              f"{np.mean([not a['unknown'] for a in tested]):.1%}")
    print(f"command: python bench/unknowns.py --budget {args.budget} --unknowns {args.unknowns}; {date.today()}")


if __name__ == "__main__":
    main()
