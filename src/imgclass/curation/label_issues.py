"""Suspected label errors: every image's class probabilities from a model that never saw it (K folds of a linear
head on its frozen embedding), ranked by confident learning (cleanlab's find_label_issues: an image is suspect when
its given class is much less probable than the share of such confusions across the whole set predicts).

The head is scikit-learn's multinomial logistic regression on standardised embeddings: the linear softmax head the
head stage of fine-tuning trains, fitted exactly instead of by SGD, and seconds per fold on a CPU (fashion_hier's
3,221 images x 1280 features x 25 classes, 5 folds: 21 s on machine A)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import UserError

FOLDS = 5


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold probabilities and what they cover."""
    probs: np.ndarray      # N x C (C: labels.max() + 1); the rows of images not judged are NaN
    folds: int             # the folds used (fewer than asked when a class has fewer images than folds)
    judged: np.ndarray     # N bools: the images whose class has two images or more


def out_of_fold_probabilities(vectors: np.ndarray, labels: np.ndarray, folds: int = FOLDS, seed: int = 0
                              ) -> OutOfFold:
    """Each judged image's class probabilities from the head fitted on the folds it is not in. An image whose class
    has a single image cannot be judged: the folds that leave it out have never seen its class, which would get
    probability 0 and top every ranking; such images are left unjudged (NaN rows), and the caller says so."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    counts = np.bincount(labels)
    kept = np.flatnonzero(counts >= 2)
    if len(kept) < 2:
        raise UserError("label issues need at least two classes with two images or more")
    judged = np.isin(labels, kept)
    # a class with fewer images than folds cannot be in every fold's training part: fewer folds, at least 2
    folds = int(max(2, min(folds, counts[kept].min())))
    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    import warnings
    with warnings.catch_warnings():  # convergence and numerical warnings of the fit: the folds are said instead
        warnings.simplefilter("ignore")
        probs = cross_val_predict(head, vectors[judged], labels[judged], cv=cv, method="predict_proba")
    full = np.full((len(labels), len(counts)), np.nan)
    full[judged] = 0.0
    full[np.ix_(np.flatnonzero(judged), kept)] = probs  # predict_proba's columns: the classes fitted, in order
    return OutOfFold(full, folds, judged)


@dataclass(frozen=True)
class LabelIssue:
    index: int             # row in the embeddings
    given: int             # the label the folder gives
    suggested: int         # the most probable class out of fold
    quality: float         # cleanlab's label quality score (self-confidence): lower is more suspect
    given_probability: float
    suggested_probability: float


def find_label_issues(probs: np.ndarray, labels: np.ndarray) -> list[LabelIssue]:
    """The images confident learning flags (cleanlab's default filter, prune_by_noise_rate), most suspect first;
    rows of NaN (images not judged) take no part."""
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores
    rows = np.flatnonzero(~np.isnan(probs).any(1))
    classes = np.unique(labels[rows])
    local = np.searchsorted(classes, labels[rows])  # cleanlab wants the classes it sees numbered 0..K-1
    sub = probs[np.ix_(rows, classes)]
    flagged = cleanlab_issues(local, sub, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(local, sub)
    return [LabelIssue(int(rows[i]), int(labels[rows[i]]), int(classes[sub[i].argmax()]), float(quality[i]),
                       float(sub[i, local[i]]), float(sub[i].max())) for i in flagged]


def top_losses(probs: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """The n images of highest cross-entropy loss under probs (fastai's top_losses, the baseline the benchmark
    compares confident learning with), highest first."""
    loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))
    return np.argsort(-loss, kind="stable")[:n]
