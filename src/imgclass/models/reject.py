""""None of these": a model may answer `unknown` for an image unlike anything it was trained on. The score is the
cosine similarity of the image's embedding (the pooled features its head classifies from) to its k-th nearest
training image's; the threshold is set on the validation split so that a chosen share of in-distribution images
(acceptance, 95% by default) is still answered. Threshold and training embeddings (those of the training images
scored at the end of training: a seeded sample stratified by class, at least K of each class where it has them; at
most BANK_MAX, cut keeping the classes' shares; float16) are stored in the model file; predict, submit and serve apply them only when asked (--reject,
?reject=true), and evaluate --map marks what they would reject, all through `Rejection.decide`, so they agree.

Why k-NN: `python bench/unknowns.py` (bench/RESULTS.md, machine A, 2026-12-02; trained on hymenoptera, 600
fashion_hier photos as unknowns) measured AUROC 0.9997 for the 10th neighbour's similarity (every unknown rejected at
95% validation acceptance) against 0.951 for the calibrated maximum probability (55% rejected) and 0.929 for the
energy score (39%). A classifier is confidently wrong far from its data: its probabilities only say which side of a
boundary an image falls, while the distance to the training images says whether it is near any of them.

A model file without stored embeddings (older files) can still reject at a threshold the user gives
(--reject-threshold) on the maximum probability."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..core.errors import UserError
from .neighbours import exact_search, unit_rows

UNKNOWN = "unknown"
DEFAULT_ACCEPTANCE = 0.95
K = 10            # the neighbour whose similarity scores an image (bench: k = 1, 5, 10 gave AUROC 0.9985, 0.9995, 0.9997)
BANK_MAX = 4096   # training embeddings kept in the model file: 4096 x 1280 float16 is 10 MB for EfficientNet-Lite0
SCORES = ("knn", "max_probability")
BANK_KEY = "reject.bank"  # the model file's tensor holding the training embeddings (never a model parameter's name)


def kth_similarity(bank: np.ndarray, feats: np.ndarray, k: int) -> np.ndarray:
    """Each row's cosine similarity to its k-th most similar bank row (unit rows; an exact search: the bank is small)."""
    return exact_search(bank, unit_rows(feats), k)[1][:, min(k, len(bank)) - 1]


def _threshold(scores: np.ndarray, acceptance: float) -> float:
    """The score that `acceptance` of these images reach (the rest fall below it)."""
    if not 0 < acceptance <= 1:
        raise UserError(f"the rejection's acceptance must be in (0, 1], not {acceptance}")
    ordered = np.sort(scores)
    cut = int(math.floor((1 - acceptance) * len(ordered) + 1e-9))  # this many fall below (1e-9: 0.1 * 100 is 9.99...)
    return float(ordered[min(cut, len(ordered) - 1)])


@dataclass(frozen=True)
class Rejection:
    threshold: float                        # images whose score is below it are answered "unknown"
    acceptance: float = DEFAULT_ACCEPTANCE  # share of validation images scoring at least the threshold (nan: given)
    score: str = "knn"                      # "knn": similarity to the k-th nearest training image; "max_probability"
    k: int = K                              # knn: which neighbour
    n: int = 0                              # validation images the threshold was set on (0: given by the user)
    bank: np.ndarray | None = field(default=None, compare=False, repr=False)  # knn: unit training embeddings

    @classmethod
    def fit(cls, val_feats: np.ndarray, train_feats: np.ndarray, acceptance: float = DEFAULT_ACCEPTANCE,
            seed: int = 0, strata: np.ndarray | None = None) -> "Rejection":
        """The k-NN rule: at most BANK_MAX training embeddings (a seeded sample; with strata, the training images'
        classes, each class keeps at least K), and the threshold that accepts `acceptance` of the validation
        images."""
        keep = np.arange(len(train_feats))
        if len(keep) > BANK_MAX:
            from ..data.split import stratified_sample
            keep = stratified_sample(strata if strata is not None else np.zeros(len(keep)), BANK_MAX, K, seed)
        bank = unit_rows(train_feats[keep]).astype(np.float16).astype(np.float32)  # as the file will hold it
        scores = kth_similarity(bank, val_feats, K)
        return cls(_threshold(scores, acceptance), acceptance, "knn", min(K, len(bank)), len(val_feats), bank)

    @property
    def needs_features(self) -> bool:
        return self.score == "knn"

    def scores(self, probs: np.ndarray, feats: np.ndarray | None = None) -> np.ndarray:
        """Each image's score (higher: more like the training images)."""
        if self.score == "max_probability":
            return probs.max(axis=1)
        if self.bank is None or feats is None:
            raise UserError("this rejection needs the model file's training embeddings and the images' features")
        return kth_similarity(self.bank, feats, self.k)

    def decide(self, probs: np.ndarray, feats: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(whether each image is unknown: its score below the threshold; each score): the one place the rule is
        applied, by predict, submit, the service and evaluate --map alike."""
        scores = self.scores(probs, feats)
        return scores < self.threshold, scores

    def mark(self, answers: list[dict[str, Any]], probs: np.ndarray, feats: np.ndarray | None = None
             ) -> list[dict[str, Any]]:
        """The answers of these images, each with "unknown" (decide's) and its "score"."""
        unknown, scores = self.decide(probs, feats)
        return [{**answer, "unknown": bool(u), "score": float(s)} for answer, u, s in zip(answers, unknown, scores)]

    def at(self, threshold: float) -> "Rejection":
        """This rule at a threshold the user gives (--reject-threshold)."""
        if not (0 <= threshold <= 1 if self.score == "max_probability" else -1 <= threshold <= 1):
            raise UserError(f"--reject-threshold must be in [{0 if self.score == 'max_probability' else -1}, 1] for "
                            f"the {self.score} score, not {threshold}")
        return replace(self, threshold=float(threshold), acceptance=float("nan"), n=0)

    def describe(self) -> str:
        what = (f"an image whose embedding's similarity to its {self.k}th nearest training image is below "
                f"{self.threshold:.3f}" if self.score == "knn" else
                f"an image whose highest probability is below {self.threshold:.3f}")
        kept = f": the threshold keeps {self.acceptance:.0%} of the {self.n} validation images" if self.n else ""
        return f"{what} is answered '{UNKNOWN}'{kept}"

    def to_dict(self) -> dict[str, Any]:
        out = {"score": self.score, "threshold": self.threshold, "acceptance": self.acceptance, "n": self.n}
        return {**out, "k": self.k, "bank": 0 if self.bank is None else len(self.bank)} if self.score == "knn" else out

    @classmethod
    def from_dict(cls, entry: Any, bad) -> "Rejection":
        if not isinstance(entry, dict) or entry.get("score") not in SCORES:
            raise bad(f"'inference.reject.score' must be one of {', '.join(SCORES)}")
        threshold, acceptance, n, k = entry.get("threshold"), entry.get("acceptance"), entry.get("n", 0), entry.get("k", K)
        if not isinstance(threshold, (int, float)) or not -1 <= threshold <= 1:
            raise bad("'inference.reject.threshold' must be a number in [-1, 1]")
        if not isinstance(acceptance, (int, float)) or not (0 < acceptance <= 1 or math.isnan(acceptance)):
            raise bad("'inference.reject.acceptance' must be in (0, 1]")
        if not isinstance(n, int) or not isinstance(k, int) or k < 1:
            raise bad("'inference.reject' needs counts n and k")
        return cls(float(threshold), float(acceptance), entry["score"], k, n)

    def with_bank(self, bank: np.ndarray | None, file) -> "Rejection":
        """The rule with the training embeddings the model file holds (checked against its header)."""
        if self.score != "knn":
            return self
        if bank is None or bank.ndim != 2 or not len(bank) or len(bank) < self.k:
            raise UserError(f"{file} has a k-NN rejection but no usable training embeddings ({BANK_KEY})")
        return replace(self, bank=unit_rows(bank))


def max_probability_rule(threshold: float) -> Rejection:
    """A rejection at a threshold on the maximum probability (models without a stored rule)."""
    return Rejection(0.5, float("nan"), "max_probability", 1, 0).at(threshold)
