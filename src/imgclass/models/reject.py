""""None of these": a model may answer `unknown` for an image unlike anything it was trained on. The score is the
calibrated maximum class probability, and the threshold is set on the validation split so that a chosen share of
in-distribution images (acceptance, 95% by default) is still answered; it is stored in the model file, and predict,
submit and serve apply it only when asked (--reject, ?reject=true), through `Rejection.mark`, so they agree.

Why the maximum probability: `python bench/unknowns.py` (bench/RESULTS.md, 2026-12-02) measured it against the
energy score and the k-NN distance in embedding space. It needs only the probabilities, so every runtime (ONNX
Runtime, bf16, the service's batches) computes it the same way and the model file needs no stored embeddings."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError

UNKNOWN = "unknown"
DEFAULT_ACCEPTANCE = 0.95


@dataclass(frozen=True)
class Rejection:
    threshold: float                   # images whose score is below it are answered "unknown"
    acceptance: float = DEFAULT_ACCEPTANCE  # share of validation images scoring at least the threshold (nan: given)
    score: str = "max_probability"     # the calibrated maximum class probability
    n: int = 0                         # validation images the threshold was set on (0: given by the user)

    @classmethod
    def fit(cls, probs: np.ndarray, acceptance: float = DEFAULT_ACCEPTANCE) -> "Rejection":
        """The threshold that accepts `acceptance` of these (validation) probabilities' images."""
        if not 0 < acceptance <= 1:
            raise UserError(f"the rejection's acceptance must be in (0, 1], not {acceptance}")
        scores = np.sort(probs.max(axis=1))
        cut = int(math.floor((1 - acceptance) * len(scores) + 1e-9))  # this many fall below (1e-9: 0.1 * 100 is 9.99...)
        return cls(float(scores[min(cut, len(scores) - 1)]), acceptance, n=len(scores))

    def scores(self, probs: np.ndarray) -> np.ndarray:
        return probs.max(axis=1)

    def mark(self, answer: dict[str, Any], probs_row: np.ndarray) -> dict[str, Any]:
        """An answer with "unknown" (true when its score is below the threshold) and its "score"."""
        score = float(probs_row.max())
        return {**answer, "unknown": bool(score < self.threshold), "score": score}

    def describe(self) -> str:
        if not self.n:
            return f"an image whose highest probability is below {self.threshold:.3f} is answered '{UNKNOWN}'"
        return (f"an image whose highest (calibrated) probability is below {self.threshold:.3f} is answered "
                f"'{UNKNOWN}': the threshold keeps {self.acceptance:.0%} of the {self.n} validation images")

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "threshold": self.threshold, "acceptance": self.acceptance, "n": self.n}

    @classmethod
    def from_dict(cls, entry: Any, bad) -> "Rejection":
        if not isinstance(entry, dict) or entry.get("score") != "max_probability":
            raise bad("'inference.reject' must be {score: max_probability, threshold, acceptance, n}")
        threshold, acceptance, n = entry.get("threshold"), entry.get("acceptance"), entry.get("n", 0)
        if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise bad("'inference.reject.threshold' must be a probability")
        if not isinstance(acceptance, (int, float)) or not 0 < acceptance <= 1 or not isinstance(n, int):
            raise bad("'inference.reject' needs an acceptance in (0, 1] and a count n")
        return cls(float(threshold), float(acceptance), n=n)


def given_threshold(threshold: float) -> Rejection:
    """A rejection at a threshold the user gives (--reject-threshold)."""
    if not 0 <= threshold <= 1:
        raise UserError(f"--reject-threshold must be a probability in [0, 1], not {threshold}")
    return Rejection(float(threshold), float("nan"))
