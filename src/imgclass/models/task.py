"""The label structure of a model, behind one interface: a Task owns what depends on how images are labelled
(one class per image, or coarse -> fine), so the training loop, the Predictor, the service and the exports
need not know which it is:

- what the model file records about the labels (`header_entry`, read back by `task_from_header`),
- the model's outputs for them (`build`) and the training loss (`loss`, and `head_loss` on cached features),
- the options it cannot take (`refuse`),
- the answers it gives at each level (`views`: predict's top-k, the service's, the submission's columns).

Every task's model outputs scores whose softmax is the probability of each class in `classes` order (two-level
models output log p(fine)), so scoring, calibration, ONNX/TorchScript export and the service are shared.
Evaluation's extra metrics per task are registered in evaluation/evaluate.py (TASK_METRICS).

A new label structure subclasses Task, and is added to TASKS and to plan.task_for (how the data layer's
labels become it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TrainConfig
from ..errors import UserError
from .hierarchy import STRATEGIES, Hierarchical, coarse_probabilities
from .registry import create_model


class Task:
    name: ClassVar[str]
    levels: ClassVar[tuple[str, ...]] = ("fine",)  # the answers `views` gives (predict/submit --level)

    def header_entry(self) -> dict[str, Any] | None:
        """What the model file's "hierarchy" key holds for this task (format version 1)."""
        return None

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


SINGLE_LABEL = SingleLabel()
TASKS: dict[str, type[Task]] = {"single-label": SingleLabel, "two-level": TwoLevel}


def task_from_header(entry: Any, classes, bad) -> Task:
    """The task a model file's "hierarchy" entry describes (None: one class per image); bad(what) makes the
    error for a malformed entry."""
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
