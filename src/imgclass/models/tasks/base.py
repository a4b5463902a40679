"""The Task interface: what depends on how images are labelled, so that training, the Predictor, submit, the service,
the exports and evaluation never ask which task a model has. A Task says:

- which labels it reads (`label_kind`, data/labels.py) and whether it serves a data folder's labels (`claims`,
  `from_data`); what the model file records (`header_entry`, `task_entry`; read back by `from_entry`),
- the model's outputs (`build`), what they become (`probabilities`: a softmax, a sigmoid per tag, a number), the
  training loss (`loss`, `head_loss`), what training counts as right (`correct`) and validates on (`score`), how
  the final scoring turns logits into answers on every split (`finish`: calibration, thresholds, the metrics),
- what it cannot do (`unsupported`: one line each, said by `require`; `refuse` for training options),
- the answers it gives (`answers`: predict's and the service's; `views` per level), a table's row of an answer
  (`summary_row`), a submission's columns and rows (`submission`), and evaluate's one-line summary (`headline`).

What evaluation computes and draws for a task lives in evaluation/tasks.py (the layer that has the metrics and
figures), registered under the task's `name`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data.labels import CLASSES, LabelKind
from ...core.errors import UserError
from ..inference import probabilities as softmax_probabilities
from ..registry import create_model


def top_labels(row: np.ndarray, names, k: int) -> list[dict[str, Any]]:
    """The k most probable labels of one probability row, best first (ties in class order)."""
    order = np.argsort(-row, kind="stable")[:max(1, min(k, len(names)))]
    return [{"label": names[j], "probability": float(row[j])} for j in order]


class TrainingSettings(Protocol):
    """The training settings a task reads (training/config.py's TrainConfig has them; the tasks sit below training,
    so they name what they read here rather than import the training options)."""
    hierarchy_strategy: str           # two-level labels: flat, two-stage or multi-head
    threshold: float | None           # several tags: one decision threshold for every tag
    mixup: float | None
    cutmix: float | None
    class_weights: str                # none or auto
    balanced_sampler: bool
    weights: str | None               # a local weight file to start from
    pretrained: bool                  # start from published weights (with weights: a backbone to fine-tune)
    hflip: bool                       # horizontal flips allowed in augmentation


@dataclass(frozen=True)
class Finished:
    """What a task's final scoring (`Task.finish`) hands back: each split's metrics and outputs (probabilities, or
    numbers), what was calibrated (None: nothing), and the task with what it decided on validation."""
    metrics: dict[str, dict[str, Any]]
    outputs: dict[str, torch.Tensor]
    calibration: dict[str, Any] | None
    task: "Task"


DEFAULT_TOP_K = 3  # labels an answer lists unless asked (predict --top-k)


class Task:
    name: ClassVar[str]
    levels: ClassVar[tuple[str, ...]] = ("fine",)  # the answers `views` gives (predict/submit --level)
    level_refusal: ClassVar[str] = "this model has one level of labels (train with --hierarchy or --label-columns)"
    format_version: ClassVar[int] = 1             # the model-file format its entries need
    score_name: ClassVar[str] = "accuracy"        # what `score` measures (metrics.csv's val_acc holds it)
    train_score_name: ClassVar[str] = "accuracy"  # what `correct` counts (metrics.csv's train_acc)
    label_kind: ClassVar[LabelKind] = CLASSES     # the labels it reads (data/labels.py)
    # What this task cannot do, each with the one line that refuses it (`require`):
    #   reject: "none of these" (predict/submit/serve --reject);  threshold: one decision threshold for all tags;
    #   top_k: several ranked answers;  coreml_classifier: a Core ML classifier (labels inside the program);
    #   timm_layout: the hub export's timm files (a single linear classifier head);  mix: --mixup/--cutmix;
    #   class_weights: --class-weights auto;  balanced_sampler: --balanced-sampler;  data_map: evaluate --map;
    #   top_stage: --finetune top (fine-tuning the top blocks on cached activations)
    unsupported: ClassVar[dict[str, str]] = {"threshold": "--threshold is for several tags per image (--multi-label)"}
    mix_targets: ClassVar[str] = "classes"        # how --mixup/--cutmix mix its labels: classes or tags


    # --- the labels ---------------------------------------------------------------------------------------
    @classmethod
    def claims(cls, found) -> bool:
        """Whether this task serves the labels of a data folder as found (data.find.Found)."""
        return False

    @classmethod
    def from_data(cls, found, split, cfg: TrainingSettings) -> "Task":
        """This task for a data folder's labels and its split (a task may learn from the training labels)."""
        return cls()

    @classmethod
    def from_entry(cls, entry: Any, classes, bad) -> "Task":
        """This task from its model-file entry ("task", format 2); bad(what) makes the error for a malformed one."""
        return cls()

    def header_entry(self) -> dict[str, Any] | None:
        """What the model file's "hierarchy" key holds for this task (format version 1)."""
        return None

    def task_entry(self) -> dict[str, Any] | None:
        """What the model file's "task" key holds (format version 2; None: no such key)."""
        return None

    # --- what it cannot do ----------------------------------------------------------------------------------
    def supports(self, feature: str) -> bool:
        return feature not in self.unsupported

    def require(self, feature: str) -> None:
        """A UserError (one line) when this task cannot do `feature` (see `unsupported`)."""
        if feature in self.unsupported:
            raise UserError(self.unsupported[feature])

    @classmethod
    def default_settings(cls, cfg: TrainingSettings) -> dict[str, Any]:
        """Settings this task gives a new run where the user gave none (TrainConfig field -> value). A class method:
        `--model auto` reads them before the task is built, to plan with what the run will use."""
        return {}

    def defaults_note(self, chosen: dict[str, Any]) -> str:
        """The note saying which of its default_settings a run took, and why."""
        return ""

    def refuse(self, cfg: TrainingSettings, processes: bool) -> None:
        """A UserError for training options this task does not support (processes: several DDP processes)."""
        if cfg.threshold is not None:
            self.require("threshold")
        if cfg.mixup or cfg.cutmix:
            self.require("mix")
        if cfg.class_weights == "auto":
            self.require("class_weights")
        if cfg.balanced_sampler:
            self.require("balanced_sampler")

    def check_top_k(self, top_k: int | None) -> int:
        """The labels an answer lists: top_k (None: the default), refused below 1 or where the task has no ranking."""
        if top_k is None:
            return DEFAULT_TOP_K
        self.require("top_k")
        if top_k < 1:
            raise UserError(f"--top-k must be at least 1, not {top_k}")
        return top_k

    # --- the model and training -------------------------------------------------------------------------
    answer_scale: ClassVar[float] = 1.0  # the unit of its answers' differences (exports' parity, bf16's check)

    def probabilities(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """What the model answers: each class's probability, a softmax over the classes at the model file's
        temperature."""
        return softmax_probabilities(logits, temperature)

    def label_counts(self, labels: torch.Tensor, n: int) -> list[int]:
        """Images per class in a split's labels."""
        return torch.bincount(labels, minlength=n).tolist()

    def class_weights(self, labels: torch.Tensor, n: int) -> torch.Tensor:
        """--class-weights auto: scikit-learn's "balanced" weights, n_samples / (n_classes * count)."""
        from sklearn.utils.class_weight import compute_class_weight  # deferred: only for this option
        return torch.tensor(compute_class_weight("balanced", classes=np.arange(n), y=labels.numpy()),
                            dtype=torch.float32)

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        """Training images answered right (train accuracy = this / images)."""
        return int((logits.argmax(1) == y.to(logits.device)).sum())

    def score(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(validation loss, validation score: accuracy) of a split's scores; a higher score is better."""
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())

    def probability_score(self, probs: np.ndarray, labels: np.ndarray) -> float:
        """The score (score_name) of the model's answers against labels: what an int8 export must keep."""
        return float((np.asarray(probs).argmax(1) == np.asarray(labels)).mean())

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

    def finish(self, logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], calibrate: bool,
               threshold: float | None, say: Callable[..., None]) -> Finished:
        """The final scoring of the trained model's logits on each split (val, when present, is what it calibrates
        and decides on): a softmax temperature fitted on validation (calibrate), and each split's accuracy,
        loss and n at it."""
        calibration = None
        if calibrate and "val" not in logits:
            say("no validation split: the probabilities are left uncalibrated (--val-split > 0 calibrates them)",
                warning=True)
        elif calibrate:
            from ..calibration import calibration_facts, fit_temperature
            calibration = calibration_facts(logits["val"], labels["val"], fit_temperature(logits["val"], labels["val"]))
            say(f"calibration: softmax temperature {calibration['temperature']:.3f} fitted on {calibration['n']} "
                f"validation images; their ECE {calibration['val_ece_before']:.3f} -> "
                f"{calibration['val_ece_after']:.3f}")
        t = calibration["temperature"] if calibration else 1.0
        metrics = {name: {"accuracy": float((z.argmax(1) == labels[name]).float().mean()),
                          "loss": float(F.cross_entropy(z / t, labels[name])), "n": len(labels[name])}
                   for name, z in logits.items()}
        return Finished(metrics, {name: self.probabilities(z, t) for name, z in logits.items()}, calibration, self)

    # --- describing it ------------------------------------------------------------------------------------
    @property
    def variant(self) -> str:
        """How this task's model answers, when it has several ways (compare's "strategy" column); "" if not."""
        return ""

    def answering(self, classes) -> str:
        """What the model answers, in a few words: "10 classes"."""
        return f"{len(classes)} classes"

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

    def split_line(self, name: str, metrics: dict[str, Any]) -> str:
        """One split's final scores, for the end of training."""
        return f"{name} accuracy {metrics['accuracy']:.4f} (n={metrics['n']})"

    def compare_cells(self, final: dict[str, dict], test: dict[str, Any] | None) -> dict[str, Any]:
        """compare's columns for a run: from its final scores per split (results.json) and its test evaluation
        (metrics.json, None when it has none)."""
        return {"val accuracy": (final.get("val") or {}).get("accuracy"),
                "test accuracy": (final.get("test") or {}).get("accuracy"),
                "test macro F1": None if test is None else test.get("macro_f1")}

    def headline(self, metrics: dict[str, Any]) -> str:
        """evaluate's one line of an evaluation's metrics.json."""
        return (f"accuracy {metrics['accuracy']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f}, "
                f"macro F1 {metrics['macro_f1']:.4f}")

    # --- its answers --------------------------------------------------------------------------------------
    def views(self, probs: np.ndarray, classes, level: str = "fine") -> list[tuple[str, np.ndarray, list[str]]]:
        """[(level, probabilities N x K, the K names)] for an answer at `level`: one view, or several for a
        level that combines them ("both")."""
        if level != "fine":
            raise UserError(self.level_refusal)
        return [("fine", probs, list(classes))]

    def answers(self, probs: np.ndarray, classes, level: str, top_k: int) -> list[dict[str, Any]]:
        """One answer per row of probabilities: {"top_k": [...]} (with several views, "<level>_top_k" too)."""
        views = self.views(probs, classes, level)
        # one view answers as "top_k"; with several, the model's own classes do, the others as "<level>_top_k"
        keyed = [("top_k" if len(views) == 1 or name == "fine" else f"{name}_top_k", p, names)
                 for name, p, names in views]
        keyed.sort(key=lambda view: view[0] != "top_k")
        return [{key: top_labels(p[i], names, top_k) for key, p, names in keyed} for i in range(len(probs))]

    table_columns: ClassVar[tuple[str, ...]] = ("prediction", "probability", "top-k")  # summary_row's, in a table

    def summary_row(self, answer: dict[str, Any]) -> tuple[str, float | None, str]:
        """(what an answer says, its probability or value, the rest of it): a row of predict's table."""
        best = answer["top_k"][0]
        return best["label"], best["probability"], ", ".join(
            f"{t['label']} {t['probability']:.3f}" for t in answer["top_k"][1:])

    def csv_columns(self, answers: list[dict[str, Any]]) -> tuple[list[str], Callable[[dict[str, Any]], list[str]]]:
        """predict --format csv: (the columns an answer fills beside image, unknown/score and error; f(answer) ->
        its cells)."""
        k = max((len(a.get("top_k", [])) for a in answers), default=0)

        def cells(answer):
            ranked = [x for t in answer.get("top_k", []) for x in (t["label"], f"{t['probability']:.6f}")]
            return ranked + [""] * (2 * k - len(ranked))
        return [f"{c}{i}" for i in range(1, k + 1) for c in ("label", "probability")], cells

    unreadable_answer: ClassVar[str] = "the most common class"  # what submit writes for an image it cannot read

    def submission(self, probs: np.ndarray, ok: np.ndarray, classes, level: str, target: str, form: str,
                   unknown: np.ndarray | None, target_column: str) -> tuple[list[str], list[tuple[str, ...]]]:
        """(the columns after the id, one row of cells per image): the class at each level (target: its name, or its
        index); an unreadable image (ok False) gets the most common answer, a rejected one (unknown) 'unknown' or
        -1. form: auto only (tags choose their form)."""
        if form != "auto":
            raise UserError(f"--format {form} is for a model with several tags per image; this one gives one class")
        from ..reject import UNKNOWN
        columns = []
        for _, p, names in self.views(probs, classes, level):  # "both": coarse, then fine
            pred = np.where(ok, np.nan_to_num(p, nan=-1).argmax(axis=1), -1)
            fallback = int(np.bincount(pred[ok]).argmax()) if ok.any() else 0
            pred = np.where(ok, pred, fallback)  # Kaggle needs a row for every id: unreadable -> most common class
            column = [names[i] if target == "label" else str(int(i)) for i in pred]
            if unknown is not None:  # decided on the model's own classes' probabilities, whatever the level
                column = [(UNKNOWN if target == "label" else "-1") if u else c for c, u in zip(column, unknown)]
            columns.append(column)
        header = [f"{target_column}_COARSE", f"{target_column}_FINE"] if level == "both" else [target_column]
        return header, list(zip(*columns))


def _listed(names, most: int = 30) -> str:
    return ", ".join(list(names)[:most]) + (" ..." if len(names) > most else "")
