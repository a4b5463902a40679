"""The label structure of a model, behind one interface: a Task owns what depends on how images are labelled
(one class per image: SingleLabel; coarse -> fine: TwoLevel; several tags per image: MultiLabel), so the
training loop, the Predictor, the service and the exports need not know which it is:

- what the model file records about the labels (`header_entry`, `task_entry`; read back by `task_from_header`),
- the model's outputs for them (`build`), how they become probabilities (`probabilities`: softmax, or a sigmoid
  per tag), the training loss (`loss`, and `head_loss` on cached features), the per-class loss weights
  (`class_weights`), what training counts as right (`correct`) and validates on (`score`),
- the options it cannot take (`refuse`),
- the answers it gives (`answers`: predict's and the service's; `views` per level: the submission's columns).

Evaluation's metrics per task are registered in evaluation/evaluate.py (TASK_METRICS).

A new label structure subclasses Task, and is added to TASKS and to plan.task_for (how the data layer's
labels become it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TrainConfig
from ..errors import UserError
from .hierarchy import STRATEGIES, Hierarchical, coarse_probabilities
from .inference import probabilities as softmax_probabilities
from .registry import create_model


def top_labels(row: np.ndarray, names, k: int) -> list[dict[str, Any]]:
    """The k most probable labels of one probability row, best first (ties in class order)."""
    order = np.argsort(-row, kind="stable")[:max(1, min(k, len(names)))]
    return [{"label": names[j], "probability": float(row[j])} for j in order]


class Task:
    name: ClassVar[str]
    levels: ClassVar[tuple[str, ...]] = ("fine",)  # the answers `views` gives (predict/submit --level)
    format_version: ClassVar[int] = 1             # the model-file format its entries need
    score_name: ClassVar[str] = "accuracy"        # what `score` measures (metrics.csv's val_acc holds it)
    exclusive: ClassVar[bool] = True              # one class per image: softmax, temperature calibration
    train_score_name: ClassVar[str] = "accuracy"  # what `correct` counts (metrics.csv's train_acc)

    def header_entry(self) -> dict[str, Any] | None:
        """What the model file's "hierarchy" key holds for this task (format version 1)."""
        return None

    def task_entry(self) -> dict[str, Any] | None:
        """What the model file's "task" key holds (format version 2; None: no such key)."""
        return None

    def probabilities(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Each class's probability: a softmax over the classes at the model file's temperature."""
        return softmax_probabilities(logits, temperature)

    def label_counts(self, labels: torch.Tensor, n: int) -> list[int]:
        """Images per class in a split's labels."""
        return torch.bincount(labels, minlength=n).tolist()

    def class_weights(self, labels: torch.Tensor, n: int) -> torch.Tensor:
        """--class-weights auto: scikit-learn's "balanced" weights, n_samples / (n_classes * count)."""
        from sklearn.utils.class_weight import compute_class_weight  # deferred: only for this option
        return torch.tensor(compute_class_weight("balanced", classes=np.arange(n), y=labels.numpy()),
                            dtype=torch.float32)

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> int:
        """Training images answered right (train accuracy)."""
        return int((logits.argmax(1) == y.to(logits.device)).sum())

    def score(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(validation loss, validation score: accuracy) of a split's scores."""
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())

    def probability_score(self, probs: np.ndarray, labels: np.ndarray) -> float:
        """The score (score_name) of probabilities against labels: what an int8 export must keep."""
        return float((np.asarray(probs).argmax(1) == np.asarray(labels)).mean())

    def fitted(self, probs: np.ndarray | None, labels: np.ndarray | None, say, threshold: float | None = None,
               n_tags: int | None = None) -> "Task":
        """This task with what it decides from the validation split's probabilities once training ends (its
        decision thresholds; threshold: one given for all); as it is for tasks that decide nothing."""
        return self

    def answers(self, probs: np.ndarray, classes, level: str, top_k: int) -> list[dict[str, Any]]:
        """One answer per row of probabilities: {"top_k": [...]} (with several views, "<level>_top_k" too)."""
        views = self.views(probs, classes, level)
        # one view answers as "top_k"; with several, the model's own classes do, the others as "<level>_top_k"
        keyed = [("top_k" if len(views) == 1 or name == "fine" else f"{name}_top_k", p, names)
                 for name, p, names in views]
        keyed.sort(key=lambda view: view[0] != "top_k")
        return [{key: top_labels(p[i], names, top_k) for key, p, names in keyed} for i in range(len(probs))]

    def build(self, arch, classes) -> nn.Module:
        """The model of an architecture (models/header.Architecture) for these classes."""
        return create_model(arch.name, num_classes=len(classes), dropout=arch.dropout, **arch.args)

    def loss(self, model: nn.Module, forward: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
             label_smoothing: float, class_weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the training loss, scores whose argmax is each image's predicted class). forward: the model as the
        loop runs it (compiled, DDP); target: y, or mixup/cutmix's soft targets."""
        logits = forward(x).float()
        return F.cross_entropy(logits, target, weight=class_weights, label_smoothing=label_smoothing), logits

    def head_loss(self, model: nn.Module, feats: torch.Tensor, y: torch.Tensor, label_smoothing: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of the head alone on cached backbone features (the head stage of fine-tuning)."""
        logits = model.forward_head(feats)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    def refuse(self, cfg: TrainConfig, processes: bool) -> None:
        """A UserError for training options this task does not support yet (processes: several DDP processes)."""

    @property
    def variant(self) -> str:
        """How this task's model answers, when it has several ways (compare's "strategy" column); "" if not."""
        return ""

    def describe(self, classes) -> str | None:
        """A line for the start of training, or None."""
        return None

    def intended_use(self, classes) -> str:
        """What the model does, for its model card."""
        return (f"Classify an image into one of: {_listed(classes)}. It knows nothing else: an image of anything "
                "else still gets one of these labels.")

    def calibration_text(self, temperature: float) -> str:
        """How its probabilities are calibrated, for its model card."""
        return f"Softmax temperature (calibration on the validation split): {temperature:.4f}."

    def views(self, probs: np.ndarray, classes, level: str = "fine") -> list[tuple[str, np.ndarray, list[str]]]:
        """[(level, probabilities N x K, the K names)] for an answer at `level`: one view, or several for a
        level that combines them ("both")."""
        if level != "fine":
            raise UserError("this model has one level of labels (train with --hierarchy or --label-columns)")
        return [("fine", probs, list(classes))]


@dataclass(frozen=True)
class SingleLabel(Task):
    """One class per image."""
    name: ClassVar[str] = "single-label"


@dataclass(frozen=True)
class TwoLevel(Task):
    """Two-level labels (coarse -> fine): each fine class's parent, and the strategy that answers them
    (models/hierarchy.py: flat, two-stage, multi-head)."""
    strategy: str                    # flat | two-stage | multi-head
    coarse_classes: tuple[str, ...]  # coarse class names, in order
    parents: tuple[int, ...]         # per fine class, the index of its coarse class
    name: ClassVar[str] = "two-level"
    levels: ClassVar[tuple[str, ...]] = ("fine", "coarse", "both")

    def header_entry(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "coarse_classes": list(self.coarse_classes), "parents": list(self.parents)}

    def build(self, arch, classes) -> nn.Module:
        fine = super().build(arch, classes)
        coarse = super().build(arch, self.coarse_classes) if self.strategy == "two-stage" else None
        return Hierarchical(self.strategy, fine, list(self.parents), len(self.coarse_classes), coarse)

    def loss(self, model, forward, x, y, target, label_smoothing, class_weights):
        return model.training_loss(x, y, label_smoothing, class_weights)  # a loss per level

    def head_loss(self, model, feats, y, label_smoothing):
        return model.head_loss(feats, y, label_smoothing)

    def refuse(self, cfg: TrainConfig, processes: bool) -> None:
        if processes:
            raise UserError("two-level labels are not supported with several processes yet")
        if cfg.mixup or cfg.cutmix:
            raise UserError("--mixup/--cutmix mix labels of one level; with two-level labels they are not supported yet")
        if cfg.weights is not None:
            raise UserError("--weights FILE with two-level labels is not supported yet; use --pretrained")

    @property
    def variant(self) -> str:
        return self.strategy

    def describe(self, classes) -> str:
        return (f"two-level labels: {len(self.coarse_classes)} coarse, {len(classes)} fine classes; "
                f"strategy {self.strategy}")

    def coarse_probabilities(self, probs: np.ndarray) -> np.ndarray:
        """Coarse-class probabilities: each parent's summed fine probabilities."""
        return coarse_probabilities(probs, self.parents, len(self.coarse_classes))

    def views(self, probs, classes, level="fine"):
        if level not in self.levels:
            raise UserError(f"--level must be one of {', '.join(self.levels)}")
        fine = ("fine", probs, list(classes))
        if level == "fine":
            return [fine]
        coarse = ("coarse", self.coarse_probabilities(np.nan_to_num(probs)), list(self.coarse_classes))
        return [coarse] if level == "coarse" else [coarse, fine]


@dataclass(frozen=True)
class MultiLabel(Task):
    """Several tags per image (any number, none included): a sigmoid per tag, binary cross-entropy, and a
    decision threshold per tag (chosen on validation when training ends; 0.5 until then). Calibrated, a tag's
    probability is sigmoid(a * logit + b), Platt's a and b fitted on validation (training/calibrate.py)."""
    thresholds: tuple[float, ...] | None = None      # per tag: the probability from which the tag is given
    threshold_f1: tuple[float, ...] | None = None    # per tag: validation F1 at its threshold (None: not chosen)
    calibration_scale: tuple[float, ...] | None = None  # per tag: Platt's a (> 0) on the logit; None: uncalibrated
    calibration_shift: tuple[float, ...] | None = None  # per tag: Platt's b
    name: ClassVar[str] = "multi-label"
    format_version: ClassVar[int] = 2
    score_name: ClassVar[str] = "mAP"
    exclusive: ClassVar[bool] = False
    train_score_name: ClassVar[str] = "exact match"

    def task_entry(self) -> dict[str, Any]:
        entry = {"name": self.name, "thresholds": None if self.thresholds is None else list(self.thresholds),
                 "threshold_f1": None if self.threshold_f1 is None else list(self.threshold_f1)}
        if self.calibration_scale is not None:
            entry["calibration"] = {"method": "platt", "scale": list(self.calibration_scale),
                                    "shift": list(self.calibration_shift)}
        return entry

    def probabilities(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Each tag's probability: a sigmoid, of Platt's a * logit + b once calibrated (temperature: 1 for tags)."""
        if self.calibration_scale is not None:
            logits = (logits * torch.tensor(self.calibration_scale, dtype=logits.dtype, device=logits.device)
                      + torch.tensor(self.calibration_shift, dtype=logits.dtype, device=logits.device))
        return torch.sigmoid(logits / temperature)

    def calibrated(self, scale: tuple[float, ...], shift: tuple[float, ...]) -> "MultiLabel":
        """This task with Platt's per-tag (a, b); thresholds already chosen move with the probabilities, so
        every decision stays as it was (a > 0: the map is increasing)."""
        moved = None if self.thresholds is None else tuple(
            float(_sigmoid(a * _logit(t) + b)) for t, a, b in zip(self.thresholds, scale, shift))
        return dataclasses.replace(self, thresholds=moved, calibration_scale=tuple(scale),
                                   calibration_shift=tuple(shift))

    def uncalibrated(self, probs: np.ndarray) -> np.ndarray:
        """The probabilities before calibration (for the report's before/after ECE)."""
        if self.calibration_scale is None:
            return probs
        a, b = np.asarray(self.calibration_scale), np.asarray(self.calibration_shift)
        return _sigmoid((_logit(probs) - b) / a)

    def loss(self, model, forward, x, y, target, label_smoothing, class_weights):
        logits = forward(x).float()  # target: y's 0/1 rows, or mixup/cutmix's mixed ones
        return _bce(logits, target, label_smoothing, class_weights), logits

    def head_loss(self, model, feats, y, label_smoothing):
        logits = model.forward_head(feats)
        return _bce(logits, y, label_smoothing, None), logits

    def label_counts(self, labels, n):
        return labels.sum(0).tolist() if len(labels) else [0] * n

    def class_weights(self, labels, n):
        """Per-tag positive weights (BCE's pos_weight): negatives / positives, so a rare tag's positives count as
        much as its negatives; a tag without positives keeps 1."""
        pos = labels.float().sum(0)
        return torch.where(pos > 0, (len(labels) - pos) / pos.clamp(min=1), torch.ones_like(pos))

    def correct(self, logits, y):
        """Images whose every tag is right at 0.5 (exact match)."""
        return int(((logits > 0) == y.to(logits.device).bool()).all(1).sum())

    def score(self, logits, y):
        """(BCE, mAP: the mean over tags with a positive of scikit-learn's average precision)."""
        m_ap = self.probability_score(torch.sigmoid(logits).numpy(), y.numpy())
        return float(F.binary_cross_entropy_with_logits(logits, y.float())), m_ap

    def probability_score(self, probs, labels):
        """mAP, as `score` computes it."""
        from sklearn.metrics import average_precision_score  # deferred: scikit-learn only when validating
        truth = np.asarray(labels)
        present = truth.sum(0) > 0
        return float(average_precision_score(truth[:, present], np.asarray(probs)[:, present], average="macro")) \
            if present.any() else float("nan")

    def refuse(self, cfg: TrainConfig, processes: bool) -> None:
        if cfg.balanced_sampler:
            raise UserError("--balanced-sampler draws by class; with several tags per image use --class-weights auto")

    def describe(self, classes) -> str:
        return f"several tags per image: {len(classes)} tags, a sigmoid each, thresholds chosen on validation"

    def intended_use(self, classes) -> str:
        return (f"Tag an image with any number of: {_listed(classes)} (none included). A sigmoid per tag gives its "
                "probability; the tag is given where that reaches the tag's threshold, chosen on the validation "
                "split. It knows nothing else: an image of anything else may still get some of these tags.")

    def calibration_text(self, temperature: float) -> str:
        if self.calibration_scale is None:
            return "Calibration: none (each tag's probability is the sigmoid of its logit)."
        fitted = sum(1 for a, b in zip(self.calibration_scale, self.calibration_shift) if (a, b) != (1.0, 0.0))
        return (f"Calibration: Platt scaling per tag on the validation split ({fitted} of "
                f"{len(self.calibration_scale)} tags; a tag without a validation positive is left as it is), "
                "the thresholds moved with it.")

    def fitted(self, probs, labels, say, threshold: float | None = None, n_tags: int | None = None) -> "MultiLabel":
        """Per tag, the threshold that maximises its F1 on the validation split (scikit-learn's
        precision_recall_curve), moved from 0.5 by n / (n + 1) of the way for a tag with n validation positives
        (THRESHOLD_PRIOR: a cut chosen on one or two positives sits at the lowest one's score, often far below
        the negatives'); 0.5, with a warning, for a tag without a positive there (or no split). threshold
        (--threshold): that one for every tag instead (n_tags of them), its validation F1 recorded when there is
        a validation split."""
        if threshold is not None:  # (checked in the plan: 0 < threshold < 1)
            f1s = None if probs is None or labels is None else tuple(
                _f1(labels[:, j], probs[:, j] >= threshold) for j in range(labels.shape[1]))
            return dataclasses.replace(self, thresholds=(float(threshold),) * n_tags, threshold_f1=f1s)
        if probs is None or labels is None:
            say("no validation split: every tag keeps the threshold 0.5", warning=True)
            return self
        from sklearn.metrics import precision_recall_curve  # deferred: scikit-learn only when training ends
        thresholds, f1s, missing = [], [], []
        for j in range(labels.shape[1]):
            if labels[:, j].sum() == 0:
                missing.append(j)
                thresholds.append(0.5)
                f1s.append(0.0)
                continue
            precision, recall, cuts = precision_recall_curve(labels[:, j], probs[:, j])
            f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
            n = float(labels[:, j].sum())
            cut = 0.5 + (float(cuts[int(np.argmax(f1))]) - 0.5) * n / (n + THRESHOLD_PRIOR)
            thresholds.append(cut)
            f1s.append(_f1(labels[:, j], probs[:, j] >= cut))
        if missing:
            say(f"{len(missing)} tag(s) have no positive in the validation split and keep the threshold 0.5",
                warning=True)
        return dataclasses.replace(self, thresholds=tuple(thresholds), threshold_f1=tuple(f1s))

    def threshold_array(self, n_tags: int) -> np.ndarray:
        """Each tag's threshold (0.5 until chosen)."""
        return np.asarray(self.thresholds if self.thresholds is not None else [0.5] * n_tags)

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        """N x tags booleans: each tag given where its probability reaches its threshold."""
        return probs >= self.threshold_array(probs.shape[1])[None, :]

    def views(self, probs, classes, level="fine"):
        if level != "fine":
            raise UserError("several tags per image have one level (--level fine)")
        return [("fine", probs, list(classes))]

    def answers(self, probs, classes, level, top_k):
        """{"labels": the tags given, most probable first; "top_k": the k most probable tags}."""
        self.views(probs, classes, level)
        given = self.decisions(np.nan_to_num(probs))
        out = []
        for row, chosen in zip(probs, given):
            order = np.argsort(-row, kind="stable")
            ranked = [{"label": classes[j], "probability": float(row[j])} for j in order]
            out.append({"labels": [ranked[r] for r, j in enumerate(order) if chosen[j]],
                        "top_k": ranked[:max(1, top_k)]})
        return out


# How many validation positives' worth of belief the default threshold 0.5 keeps against the F1-best cut. Measured
# on fashion_hier's 49 attribute tags (bench/multilabel.py, lite0 fine-tuned 5 min, 2026-12-01; test split, macro
# F1 / micro F1 / exact match): F1-best cuts 0.281 / 0.517 / 0.009 (tags with 1-2 validation positives got cuts
# down to 0.03); 0.5 for every tag 0.207 / 0.771 / 0.266; moved by n / (n + 1) 0.263 / 0.764 / 0.284.
THRESHOLD_PRIOR = 1.0


def _listed(names, most: int = 30) -> str:
    return ", ".join(list(names)[:most]) + (" ..." if len(names) > most else "")


def _logit(p):
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _f1(truth: np.ndarray, decided: np.ndarray) -> float:
    tp = float((truth.astype(bool) & decided).sum())
    return 2 * tp / max(1.0, float(truth.sum()) + float(decided.sum()))


def _bce(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float, pos_weight: torch.Tensor | None
         ) -> torch.Tensor:
    """Binary cross-entropy per tag; label smoothing moves each 0/1 target towards 0.5 by half the amount."""
    target = y.float() * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


SINGLE_LABEL = SingleLabel()
TASKS: dict[str, type[Task]] = {"single-label": SingleLabel, "two-level": TwoLevel, "multi-label": MultiLabel}


def task_from_header(entry: Any, classes, bad, task: Any = None) -> Task:
    """The task a model file's "hierarchy" entry (format 1) or "task" entry (format 2) describes (neither: one
    class per image); bad(what) makes the error for a malformed entry."""
    if task is not None:
        return _multi_label_from(task, classes, bad)
    if entry is None:
        return SINGLE_LABEL
    coarse = entry.get("coarse_classes") if isinstance(entry, dict) else None
    parents = entry.get("parents") if isinstance(entry, dict) else None
    if (not isinstance(entry, dict) or entry.get("strategy") not in STRATEGIES or not isinstance(coarse, list)
            or not all(isinstance(c, str) for c in coarse) or not isinstance(parents, list)
            or len(parents) != len(classes)
            or not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < len(coarse) for p in parents)):
        raise bad("'hierarchy' does not match the classes")
    return TwoLevel(entry["strategy"], tuple(coarse), tuple(parents))


def _multi_label_from(entry: Any, classes, bad) -> MultiLabel:
    def numbers(key: str, low: float, high: float, within: dict | None = None) -> tuple[float, ...] | None:
        values = (entry if within is None else within).get(key)
        if values is None:
            return None
        if (not isinstance(values, list) or len(values) != len(classes) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high for v in values)):
            where = "task." if within is None else "task.calibration."
            raise bad(f"'{where}{key}' must be one number in [{low}, {high}] per tag")
        return tuple(float(v) for v in values)
    if not isinstance(entry, dict) or entry.get("name") != MultiLabel.name:
        raise bad("'task' names no label structure this imgclass knows")
    scale = shift = None
    if (calibration := entry.get("calibration")) is not None:
        if not isinstance(calibration, dict) or calibration.get("method") != "platt":
            raise bad("'task.calibration' must be Platt's per-tag scale and shift")
        scale = numbers("scale", 1e-6, 1e6, calibration)
        shift = numbers("shift", -1e6, 1e6, calibration)
        if scale is None or shift is None:
            raise bad("'task.calibration' must be Platt's per-tag scale and shift")
    return MultiLabel(numbers("thresholds", 0.0, 1.0), numbers("threshold_f1", 0.0, 1.0), scale, shift)
