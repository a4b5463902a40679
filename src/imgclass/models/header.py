"""The model file's header, typed: what a model is (architecture), what it answers (classes and their label
structure), how its inputs are prepared (preprocessing) and scored (test-time augmentation, temperature),
and where it came from. `ModelHeader.from_dict` is the one reader of the JSON a model file, a checkpoint,
an ONNX or TorchScript export carries: a header is data from anywhere, so it is checked before anything is
built from it (plain architecture arguments, sane preprocessing, labels that match the classes).

The JSON layout is format version 1, unchanged since the first model files; `to_dict` writes it key for key,
so a model file is byte for byte what it was before this class existed. Format version 2 adds one key, "task"
(several tags per image: the tags' thresholds); only such files are written as version 2, so an older
imgclass refuses them with "upgrade" instead of misreading them. Format version 3 adds "inference.reject" with a
k-NN rule, whose training embeddings are a tensor beside the weights (models/reject.py: BANK_KEY) that an older
imgclass would try to load as a parameter.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.preprocess import Preprocessing
from ..core.errors import UserError
from ..core.version import __version__
from .registry import check_args
from .reject import Rejection
from .tasks import SINGLE_LABEL, Task, task_from_header

FORMAT = "imgclass-model"
CHECKPOINT_FORMAT = "imgclass-checkpoint"
FORMAT_VERSION = 4  # the newest this imgclass reads; a file is written at the lowest its entries need (below)


@dataclass(frozen=True)
class Architecture:
    """What to build: a registry name, its plain arguments and the classifier's dropout."""
    name: str                                            # "fast", "cnn", "timm:resnet18", ...
    args: dict[str, Any] = field(default_factory=dict)   # plain values only (registry.check_args)
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args), "dropout": self.dropout}

    def with_args(self, **args: Any) -> "Architecture":
        return dataclasses.replace(self, args={**self.args, **args})


@dataclass(frozen=True)
class ModelHeader:
    arch: Architecture
    classes: tuple[str, ...]                    # class names, in the order of the model's outputs
    preprocessing: Preprocessing                # as the file says: a command's pixel limit applies on top
    #                                             (Preprocessing.within), so a file can lower it, never raise it
    task: Task = SINGLE_LABEL                   # the label structure (models/task.py): one class per image, ...
    tta: str = "none"                           # test-time augmentation every command applies
    temperature: float = 1.0                    # softmax temperature (calibration); every command divides by it
    calibration: dict[str, Any] | None = None   # the temperature and the validation ECE/NLL before and after
    reject: Rejection | None = None             # "none of these": the threshold set on validation (models/reject.py)
    metrics: dict[str, Any] = field(default_factory=dict)  # final scores and facts of the run
    weights: dict[str, Any] | None = None       # where the starting weights came from (None: from scratch)
    format: str = FORMAT                        # imgclass-model, or imgclass-checkpoint for training checkpoints
    format_version: int = 1                     # 1; 2 with a "task" entry (several tags); 3 with a k-NN rejection;
    #                                             4 a number per image (models/tasks: each task's format_version)
    imgclass_version: str = __version__         # the version that wrote the file
    loop: dict[str, Any] | None = None          # checkpoints only: the loop's progress (training.loop)
    optimizer: dict[str, Any] | None = None     # checkpoints only: the optimizer's scalar state

    @property
    def img_size(self) -> int:
        return self.preprocessing.img_size

    def to_dict(self) -> dict[str, Any]:
        out = {
            "hierarchy": self.task.header_entry(),  # format version 1 names the label structure "hierarchy"
            "format": self.format,
            "format_version": max(self.format_version, self.task.format_version,
                                  3 if self.reject is not None and self.reject.needs_features else 1),
            "imgclass_version": self.imgclass_version,
            "arch": self.arch.to_dict(),
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "inference": {"tta": self.tta, "temperature": self.temperature,
                          **({"reject": self.reject.to_dict()} if self.reject is not None else {})},
            "calibration": self.calibration,
            "metrics": self.metrics,
            "weights": self.weights,
        }
        if self.task.task_entry() is not None:
            out["task"] = self.task.task_entry()
        if self.loop is not None or self.optimizer is not None:
            out.update(loop=self.loop, optimizer=self.optimizer)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str, file: str | Path) -> "ModelHeader":
        try:
            header = json.loads(text)
        except (ValueError, RecursionError):
            header = None
        if not isinstance(header, dict):
            raise UserError(f"{file} has a damaged imgclass header (not a JSON object)")
        return cls.from_dict(header, file)

    @classmethod
    def from_dict(cls, header: dict[str, Any], file: str | Path) -> "ModelHeader":
        """Checked: refuses what is not an imgclass model (or checkpoint), a newer format, loader arguments in
        the architecture, malformed preprocessing, a non-positive temperature, labels that do not match."""
        def bad(what: str) -> UserError:
            return UserError(f"{file} has a malformed header: {what}")
        fmt, version = header.get("format", FORMAT), header.get("format_version", 0)
        if fmt not in (FORMAT, CHECKPOINT_FORMAT):
            raise UserError(f"{file} is not an imgclass model file")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise UserError(f"{file} was written by a newer imgclass ({header.get('imgclass_version')}); upgrade")
        arch, classes = header.get("arch"), header.get("classes")
        if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
            raise bad("'arch' must name the architecture")
        dropout = arch.get("dropout", 0.0)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise bad("'arch.dropout' must be a number in [0, 1)")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise bad("'classes' must be a non-empty list of names")
        try:
            pre = Preprocessing.from_dict(header.get("preprocessing") or {})
        except ValueError as exc:
            raise bad(str(exc)) from None
        inference = header.get("inference") or {}
        temperature = inference.get("temperature", 1.0)
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
            raise bad("'inference.temperature' must be a positive number")
        try:
            check_args(arch["name"], arch.get("args", {}))
        except UserError as exc:
            raise bad(str(exc)) from None
        metrics = header.get("metrics") or {}
        reject = Rejection.from_dict(inference["reject"], bad) if inference.get("reject") is not None else None
        return cls(arch=Architecture(arch["name"], dict(arch.get("args") or {}), dropout),
                   classes=tuple(classes), preprocessing=pre,
                   task=task_from_header(header.get("hierarchy"), classes, bad, header.get("task")),
                   tta=str(inference.get("tta", "none")), temperature=temperature,
                   calibration=header.get("calibration"), reject=reject, metrics=metrics if isinstance(metrics, dict) else {},
                   weights=header.get("weights"), format=fmt, format_version=version,
                   imgclass_version=str(header.get("imgclass_version", "")),
                   loop=header.get("loop"), optimizer=header.get("optimizer"))
