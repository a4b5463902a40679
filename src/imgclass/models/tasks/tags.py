"""Several tags per image (MultiLabel): a sigmoid per tag, binary cross-entropy, a decision threshold per tag chosen
on validation, Platt calibration per tag."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ...data.labels import TAGS, LabelKind
from ...core.errors import UserError
from .base import Finished, Task, TrainingSettings, _listed
from .classes import THRESHOLD_REFUSAL


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
    train_score_name: ClassVar[str] = "exact match"
    label_kind: ClassVar[LabelKind] = TAGS
    mix_targets: ClassVar[str] = "tags"
    unsupported: ClassVar[dict[str, str]] = {
        "reject": "--reject applies to one class per image; with several tags per image an image above no tag's "
                  "threshold already gets no tag",
        "balanced_sampler": "--balanced-sampler draws by class; with several tags per image use --class-weights auto",
        "coreml_classifier": "a Core ML classifier gives one class; several tags are a probabilities array",
        "timm_layout": "timm's layout is for one class per image",
        "data_map": "--map marks each class's mistakes; with several tags per image it is not drawn yet"}
    unreadable_answer: ClassVar[str] = "no tag"
    level_refusal: ClassVar[str] = "several tags per image have one level (--level fine)"

    @classmethod
    def claims(cls, found) -> bool:
        return found.kind is TAGS

    @classmethod
    def from_entry(cls, entry: Any, classes, bad) -> "MultiLabel":
        """From the model file's "task" entry, each number checked."""
        def numbers(key: str, low: float, high: float, within: dict | None = None) -> tuple[float, ...] | None:
            values = (entry if within is None else within).get(key)
            if values is None:
                return None
            if (not isinstance(values, list) or len(values) != len(classes) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high for v in values)):
                where = "task." if within is None else "task.calibration."
                raise bad(f"'{where}{key}' must be one number in [{low}, {high}] per tag")
            return tuple(float(v) for v in values)
        scale = shift = None
        if (calibration := entry.get("calibration")) is not None:
            if not isinstance(calibration, dict) or calibration.get("method") != "platt":
                raise bad("'task.calibration' must be Platt's per-tag scale and shift")
            scale = numbers("scale", 1e-6, 1e6, calibration)
            shift = numbers("shift", -1e6, 1e6, calibration)
            if scale is None or shift is None:
                raise bad("'task.calibration' must be Platt's per-tag scale and shift")
        return cls(numbers("thresholds", 0.0, 1.0), numbers("threshold_f1", 0.0, 1.0), scale, shift)


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

    def refuse(self, cfg: TrainingSettings, processes: bool) -> None:
        super().refuse(cfg, processes)
        if cfg.threshold is not None and not 0.0 < cfg.threshold < 1.0:
            raise UserError(THRESHOLD_REFUSAL)

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

    def finish(self, logits, labels, calibrate, threshold, say) -> Finished:
        """Platt scaling per tag fitted on validation (calibrate), each tag's threshold chosen there (on the
        probabilities before calibration, then moved with them, so calibration changes no decision; --threshold X
        applies to the calibrated ones), and each split's BCE, mAP and exact-match accuracy at those thresholds."""
        from ..calibration import fit_tag_calibration, probability_bce, tag_calibration_facts
        val = (logits["val"], labels["val"]) if "val" in logits else None
        n_tags = next(iter(labels.values())).shape[1]
        task, fit, calibration = self, None, None
        if calibrate and val is None:
            say("no validation split: the probabilities are left uncalibrated (--val-split > 0 calibrates them)",
                warning=True)
        elif calibrate:
            fit = fit_tag_calibration(*val)
        if threshold is None:
            task = task.fitted(None if val is None else task.probabilities(val[0]).numpy(),
                               None if val is None else val[1].numpy(), say, None, n_tags)
        if fit is not None:
            task = task.calibrated(*fit)
        if threshold is not None:
            task = task.fitted(None if val is None else task.probabilities(val[0]).numpy(),
                               None if val is None else val[1].numpy(), say, threshold, n_tags)
        if fit is not None:
            calibration = tag_calibration_facts(*val, task)
            say(f"calibration: Platt scaling per tag ({calibration['tags_fitted']} of {n_tags} tags) fitted on "
                f"{calibration['n']} validation images; their ECE per tag {calibration['val_ece_before']:.3f} -> "
                f"{calibration['val_ece_after']:.3f}")
        probs, metrics = {}, {}
        for name, split_logits in logits.items():
            probs[name] = task.probabilities(split_logits)
            _, m_ap = task.score(split_logits, labels[name])  # (the ranking, so mAP, is calibration's invariant)
            exact = float((task.decisions(probs[name].numpy()) == labels[name].numpy().astype(bool)).all(1).mean())
            metrics[name] = {"accuracy": exact, "map": m_ap, "loss": probability_bce(probs[name], labels[name]),
                             "n": len(split_logits)}
        return Finished(metrics, probs, calibration, task)

    def answering(self, classes):
        return f"{len(classes)} tags"

    def split_line(self, name, metrics):
        return f"{name} mAP {metrics['map']:.4f}, exact match {metrics['accuracy']:.4f} (n={metrics['n']})"

    def headline(self, metrics):
        return (f"mAP {metrics['map']:.4f}, macro F1 {metrics['macro_f1']:.4f} and exact match "
                f"{metrics['accuracy']:.4f} at the tags' thresholds")

    def summary_row(self, answer):
        """The tags given, the most probable one's probability, the ranked tags."""
        given = ", ".join(t["label"] for t in answer["labels"]) or "(no tag)"
        rest = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in answer["top_k"])
        return given, answer["labels"][0]["probability"] if answer["labels"] else None, rest

    def csv_columns(self, answers):
        columns, ranked = super().csv_columns(answers)
        return ["tags"] + columns, lambda a: [" ".join(t["label"] for t in a.get("labels", []))] + ranked(a)

    def submission(self, probs, ok, classes, level, target, form, unknown, target_column):
        """The tags given at the model's thresholds (none for an unreadable image): in one column, separated by
        spaces (form tags, the default), or one 0/1 column per tag (form onehot)."""
        if form not in ("auto", "tags", "onehot"):
            raise UserError("--format must be auto, tags or onehot")
        self.views(probs, classes, level)
        given = self.decisions(np.nan_to_num(probs)) & ok[:, None]
        if form == "onehot":
            return list(classes), [tuple(str(int(v)) for v in row) for row in given]
        return [target_column], [(" ".join(classes[j] if target == "label" else str(j) for j in np.flatnonzero(row)),)
                                 for row in given]


# How many validation positives' worth of belief the default threshold 0.5 keeps against the F1-best cut. Measured
# on fashion_hier's 49 attribute tags (bench/multilabel.py, lite0 fine-tuned 5 min, 2026-12-01; test split, macro
# F1 / micro F1 / exact match): F1-best cuts 0.281 / 0.517 / 0.009 (tags with 1-2 validation positives got cuts
# down to 0.03); 0.5 for every tag 0.207 / 0.771 / 0.266; moved by n / (n + 1) 0.263 / 0.764 / 0.284.
THRESHOLD_PRIOR = 1.0


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
