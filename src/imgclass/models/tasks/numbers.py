"""A number per image (Regression): an age, a price, a 1-100 score, a count (fastai's RegressionBlock, Keras's
class_mode="raw"). The head has one output, trained on standardised targets, (y - mean) / std of the training
labels, with the Huber loss (smooth L1 at one standard deviation: squared near the answer, linear beyond, so a few
mislabelled or extreme images do not dominate); the model file stores mean and std, and every command (predict,
submit, serve, every export) answers mean + std * output, the number itself.

The validation score is the negative mean absolute error, so that higher is better as for every task: the best
epoch, early stopping and tune (whose objective is then the validation MAE) need no second direction.
Calibration, thresholds, rejection and top-k do not apply and are refused in one line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ...data.labels import NUMBERS, LabelKind
from ...core.errors import UserError
from .base import Finished, Task, TrainingSettings

HUBER_DELTA = 1.0  # in standard deviations of the training labels: errors beyond it count linearly

_NOT_A_CLASS = "a model of a number per image"


@dataclass(frozen=True)
class Regression(Task):
    target_mean: float = 0.0  # the training labels' mean: the model's output 0 answers it
    target_std: float = 1.0   # their standard deviation: one unit of output is this much of the number
    name: ClassVar[str] = "regression"
    format_version: ClassVar[int] = 4  # older imgclass versions say "upgrade" instead of misreading the file
    score_name: ClassVar[str] = "negative MAE"
    train_score_name: ClassVar[str] = "negative MAE"
    label_kind: ClassVar[LabelKind] = NUMBERS
    unsupported: ClassVar[dict[str, str]] = {
        "reject": f"--reject answers 'none of these classes'; {_NOT_A_CLASS} has no classes to refuse",
        "threshold": f"--threshold decides tags; {_NOT_A_CLASS} answers the number itself",
        "top_k": f"--top-k ranks classes; {_NOT_A_CLASS} answers one number",
        "coreml_classifier": "a Core ML classifier gives a class; a number is an array output",
        "timm_layout": "timm's layout is for one class per image",
        "mix": f"--mixup/--cutmix mix class labels; they are not supported for {_NOT_A_CLASS} yet",
        "class_weights": f"--class-weights weighs classes; {_NOT_A_CLASS} has none",
        "balanced_sampler": f"--balanced-sampler draws by class; {_NOT_A_CLASS} has none",
        "data_map": f"--map colours the images by class; {_NOT_A_CLASS} has none",
        # The top stage trains the top blocks on activations cached once, without augmentation: on a number per
        # image it over-fitted. The mall set (bench/regression_mall.py, 5 min, machine A, 2026-12-07), test MAE
        # (a ridge probe of lite0: 2.43): top stage, lite2 at 260 px 2.43, lite0 at 320 px 2.39 (train MAE 0.83);
        # full fine-tuning, lite1 at 240 px 2.33 (2.24 with flip TTA), lite0 at 224 px 2.17. So --time-budget
        # chooses between full fine-tuning and the head stage for it.
        "top_stage": "the top stage (cached activations, no augmentation) over-fits a number per image: --finetune "
                     "full or head"}
    unreadable_answer: ClassVar[str] = "the training mean"

    level_refusal: ClassVar[str] = "a number per image has one level (--level fine)"

    # --- the labels ---------------------------------------------------------------------------------------
    @classmethod
    def claims(cls, found) -> bool:
        return found.kind is NUMBERS

    @classmethod
    def from_data(cls, found, split, cfg: TrainingSettings) -> "Regression":
        """Mean and standard deviation of the training split's numbers (a constant column keeps std 1)."""
        values = np.asarray([v for _, v in split.items["train"]], dtype=np.float64)
        std = float(values.std()) if len(values) > 1 else 0.0
        return cls(float(values.mean()) if len(values) else 0.0, std if std > 0 else 1.0)

    @classmethod
    def from_entry(cls, entry: Any, classes, bad) -> "Regression":
        mean, std = entry.get("target_mean"), entry.get("target_std")
        if len(classes) != 1:
            raise bad("a regression model answers one number: 'classes' must name it once")
        for key, value in (("target_mean", mean), ("target_std", std)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise bad(f"'task.{key}' must be a finite number")
        if std <= 0:
            raise bad("'task.target_std' must be positive")
        return cls(float(mean), float(std))

    def task_entry(self) -> dict[str, Any]:
        return {"name": self.name, "target_mean": self.target_mean, "target_std": self.target_std}

    # --- the model and training -------------------------------------------------------------------------
    def probabilities(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """The number: mean + std * the model's output (N x 1); no temperature applies."""
        return logits[:, :1] * self.target_std + self.target_mean

    @property
    def answer_scale(self) -> float:
        """A difference between two answers counts in standard deviations of the labels (exports' parity)."""
        return self.target_std

    def _standard(self, y: torch.Tensor) -> torch.Tensor:
        return (y.float() - self.target_mean) / self.target_std

    def label_counts(self, labels, n):
        return [len(labels)]

    def class_weights(self, labels, n):
        self.require("class_weights")

    def correct(self, logits, y):
        """Minus the summed absolute error (train "accuracy" = this / images = minus the training MAE)."""
        return -float((self.probabilities(logits.detach().float())[:, 0] - y.to(logits.device).float()).abs().sum())

    def score(self, logits, y):
        """(the Huber loss on standardised targets, minus the MAE in the labels' units)."""
        z = logits.float()[:, 0]
        return (float(F.huber_loss(z, self._standard(y), delta=HUBER_DELTA)),
                -float((self.probabilities(logits.float())[:, 0] - y.float()).abs().mean()))

    def probability_score(self, probs, labels):
        return -float(np.mean(np.abs(np.asarray(probs)[:, 0] - np.asarray(labels, dtype=np.float64))))

    def loss(self, model, forward, x, y, target, label_smoothing, class_weights):
        logits = forward(x).float()
        return F.huber_loss(logits[:, 0], self._standard(target), delta=HUBER_DELTA), logits

    def head_loss(self, model, feats, y, label_smoothing):
        logits = model.forward_head(feats)
        return F.huber_loss(logits.float()[:, 0], self._standard(y), delta=HUBER_DELTA), logits

    def finish(self, logits, labels, calibrate, threshold, say) -> Finished:
        """Each split's MAE, RMSE and R² (scikit-learn's) and Huber loss; nothing is calibrated."""
        from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score  # deferred: when training ends
        metrics, outputs = {}, {}
        for name, z in logits.items():
            outputs[name] = self.probabilities(z.float())
            pred, truth = outputs[name][:, 0].double().numpy(), labels[name].double().numpy()
            metrics[name] = {"mae": float(mean_absolute_error(truth, pred)),
                             "rmse": float(math.sqrt(mean_squared_error(truth, pred))),
                             "r2": float(r2_score(truth, pred)) if len(truth) > 1 else float("nan"),
                             "loss": self.score(z, labels[name])[0], "n": len(truth)}
        return Finished(metrics, outputs, None, self)

    # --- describing it ------------------------------------------------------------------------------------
    def answering(self, classes):
        return f"a number per image: {classes[0]}"

    @classmethod
    def default_settings(cls, cfg: TrainingSettings) -> dict[str, Any]:
        """--resize stretch: the number describes the whole image (a count of people, the price of what is shown), and
        a centre crop cuts out part of what it counts. --tta flip where images may be flipped: a number averages
        well over two views. --unfreeze all: a number often hangs on small details (people a few pixels tall) that
        the backbone's lower groups must learn to see, and gradual unfreezing leaves them frozen for most of a short
        run. Measured on the mall set (bench/regression_mall.py, 5 min, lite1 at 240 px, machine A): test MAE 2.60
        with crop, 2.33 with stretch (a ridge probe of lite0's features 2.81 and 2.43), 2.24 with flip TTA on top
        (2026-12-07); 2.21-2.24 in four runs with gradual unfreezing, 2.18 with all groups unfrozen from the start
        (4 epochs of 58 s against 7 of ~30 s; 2026-12-08)."""
        fine_tuning = cfg.pretrained or cfg.weights is not None
        return {"resize": "stretch", **({"unfreeze": "all"} if fine_tuning else {}),
                **({"tta": "flip"} if cfg.hflip else {})}

    def defaults_note(self, chosen):
        why = {"resize": "images are resized whole (--resize stretch), not centre-cropped: the number describes the "
                         "whole image", "tta": "each answer averages the image and its mirror (--tta flip)",
               "unfreeze": "the whole backbone fine-tunes from the start (--unfreeze all)"}
        return "a number per image: " + "; ".join(why[k] for k in chosen) + " (the options choose otherwise)"

    def describe(self, classes) -> str:
        return (f"a number per image ({classes[0]}): training mean {self.target_mean:.4g}, standard deviation "
                f"{self.target_std:.4g}; Huber loss on standardised targets")

    def intended_use(self, classes) -> str:
        return (f"Predict {classes[0]}, a number, from an image (trained on labels with mean {self.target_mean:.4g} "
                f"and standard deviation {self.target_std:.4g}). It knows nothing else: an image unlike its training "
                "images still gets a number.")

    def calibration_text(self, temperature: float) -> str:
        return "Calibration: none (the model answers a number)."

    def split_line(self, name, metrics):
        return (f"{name} MAE {metrics['mae']:.4g}, RMSE {metrics['rmse']:.4g}, R² {metrics['r2']:.3f} "
                f"(n={metrics['n']})")

    def compare_cells(self, final, test):
        return {"val MAE": (final.get("val") or {}).get("mae"), "test MAE": (final.get("test") or {}).get("mae"),
                "test R²": None if test is None else test.get("r2")}

    def headline(self, metrics):
        return (f"MAE {metrics['mae']:.4g}, RMSE {metrics['rmse']:.4g}, R² {metrics['r2']:.4f}, "
                f"Spearman {metrics['spearman']:.4f}")

    # --- its answers --------------------------------------------------------------------------------------
    def answers(self, probs, classes, level, top_k):
        """{"value": the number} per image."""
        self.views(probs, classes, level)
        return [{"value": float(row[0])} for row in probs]

    table_columns: ClassVar[tuple[str, ...]] = ("value",)  # the number alone

    def summary_row(self, answer):
        return f"{answer['value']:.6g}", answer["value"], ""

    def csv_columns(self, answers):
        return ["value"], lambda answer: [f"{answer['value']:.9g}" if "value" in answer else ""]

    def submission(self, probs, ok, classes, level, target, form, unknown, target_column):
        """The number (%.9g: float32 round-trips) per image; an unreadable one gets the training mean."""
        if form != "auto":
            raise UserError(f"--format {form} is for several tags per image; this model answers a number")
        self.views(probs, classes, level)
        values = np.where(ok, np.nan_to_num(probs[:, 0], nan=self.target_mean), self.target_mean)
        return [target_column], [(f"{v:.9g}",) for v in values]
