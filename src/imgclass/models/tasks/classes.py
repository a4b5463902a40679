"""One class per image (SingleLabel), and two levels of classes, coarse -> fine (TwoLevel): a softmax over the
(fine) classes, temperature calibration, the classes ranked in each answer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch.nn as nn

from ...data.labels import CLASSES
from ...core.errors import UserError
from ..hierarchy import STRATEGIES, Hierarchical, coarse_probabilities
from .base import Task, TrainingSettings

THRESHOLD_REFUSAL = "--threshold takes a probability between 0 and 1, for several tags per image (--multi-label)"


@dataclass(frozen=True)
class SingleLabel(Task):
    """One class per image."""
    name: ClassVar[str] = "single-label"
    unsupported: ClassVar[dict[str, str]] = {"threshold": THRESHOLD_REFUSAL}

    @classmethod
    def claims(cls, found) -> bool:
        return found.kind is CLASSES and found.parents is None


@dataclass(frozen=True)
class TwoLevel(Task):
    """Two-level labels (coarse -> fine): each fine class's parent, and the strategy that answers them
    (models/hierarchy.py: flat, two-stage, multi-head)."""
    strategy: str                    # flat | two-stage | multi-head
    coarse_classes: tuple[str, ...]  # coarse class names, in order
    parents: tuple[int, ...]         # per fine class, the index of its coarse class
    name: ClassVar[str] = "two-level"
    levels: ClassVar[tuple[str, ...]] = ("fine", "coarse", "both")
    unsupported: ClassVar[dict[str, str]] = {
        "threshold": THRESHOLD_REFUSAL,
        "mix": "--mixup/--cutmix mix labels of one level; with two-level labels they are not supported yet",
        "coreml_classifier": "a Core ML classifier holds one level of labels",
        "timm_layout": "timm's layout holds one classifier head, not two levels"}

    @classmethod
    def claims(cls, found) -> bool:
        return found.kind is CLASSES and found.parents is not None

    @classmethod
    def from_data(cls, found, split, cfg: TrainingSettings) -> "TwoLevel":
        return cls(cfg.hierarchy_strategy, tuple(found.coarse_classes), tuple(found.parents))

    @classmethod
    def from_header(cls, entry: Any, classes, bad) -> "TwoLevel":
        """From the model file's "hierarchy" entry (format version 1)."""
        coarse = entry.get("coarse_classes") if isinstance(entry, dict) else None
        parents = entry.get("parents") if isinstance(entry, dict) else None
        if (not isinstance(entry, dict) or entry.get("strategy") not in STRATEGIES or not isinstance(coarse, list)
                or not all(isinstance(c, str) for c in coarse) or not isinstance(parents, list)
                or len(parents) != len(classes)
                or not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < len(coarse) for p in parents)):
            raise bad("'hierarchy' does not match the classes")
        return cls(entry["strategy"], tuple(coarse), tuple(parents))

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

    def refuse(self, cfg: TrainingSettings, processes: bool) -> None:
        if processes:
            raise UserError("two-level labels are not supported with several processes yet")
        super().refuse(cfg, processes)
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

    def compare_cells(self, final, test):
        return {**super().compare_cells(final, test),
                "test coarse accuracy": None if test is None else test.get("coarse", {}).get("accuracy")}

    def headline(self, metrics):
        return (super().headline(metrics) + f"; coarse accuracy {metrics['coarse']['accuracy']:.4f}, "
                f"hierarchical consistency {metrics['hierarchical_consistency']:.4f}")

    def views(self, probs, classes, level="fine"):
        if level not in self.levels:
            raise UserError(f"--level must be one of {', '.join(self.levels)}")
        fine = ("fine", probs, list(classes))
        if level == "fine":
            return [fine]
        coarse = ("coarse", self.coarse_probabilities(np.nan_to_num(probs)), list(self.coarse_classes))
        return [coarse] if level == "coarse" else [coarse, fine]
