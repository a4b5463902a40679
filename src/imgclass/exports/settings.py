"""The export formats and how to export, light to import (`imgclass export --help` loads no torch): read by
exports/formats.py and by the command line."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..core.errors import UserError
from ..core.options import option
from ..inference.defaults import CALIBRATION_IMAGES, MAX_ACCURACY_DROP

FORMATS = ("onnx", "torchscript", "openvino", "tflite", "coreml", "triton", "hub")
HALF_FORMATS = ("openvino", "tflite", "coreml")
INT8_FORMATS = ("onnx", "openvino", "hub")  # hub: model.int8.onnx beside model.onnx, in the card too


@dataclass(frozen=True)
class ExportSettings:
    """How to export, beside the format (the command line's options are generated from these fields)."""
    quantize: Literal["int8"] | None = None  # onnx, openvino, hub: static int8 calibrated on the run's training
    # images; refused if the test accuracy drops more than --max-accuracy-drop
    max_accuracy_drop: float = option(MAX_ACCURACY_DROP, metavar="POINTS")  # int8: accuracy points it may lose
    calibration_images: int = option(CALIBRATION_IMAGES, metavar="N")  # int8: training images to calibrate on
    half: bool = False  # openvino, tflite: float16 weights (half the size); coreml: float16 compute
    backend: Literal["onnxruntime", "openvino"] = "onnxruntime"  # triton: the repository's backend
    name: str | None = None  # triton: the model's name in the repository [default: the run folder's]

    def __post_init__(self) -> None:
        if not self.max_accuracy_drop >= 0:
            raise UserError("--max-accuracy-drop must be 0 or more (points of accuracy)")
        if self.calibration_images < 1:
            raise UserError("--calibration-images must be 1 or more")
