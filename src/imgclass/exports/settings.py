"""The export formats and how to export, light to import (`imgclass export --help` loads no torch): read by
exports/formats.py and by the command line."""
from __future__ import annotations

from dataclasses import dataclass

from ..prediction.int8_defaults import CALIBRATION_IMAGES, MAX_ACCURACY_DROP

FORMATS = ("onnx", "torchscript", "openvino", "tflite", "coreml", "triton", "hub")
HALF_FORMATS = ("openvino", "tflite", "coreml")
INT8_FORMATS = ("onnx", "openvino", "hub")  # hub: model.int8.onnx beside model.onnx, in the card too


@dataclass(frozen=True)
class ExportSettings:
    """How to export, beside the format."""
    quantize: str | None = None          # "int8": static int8 (onnx, openvino), refused if accuracy drops
    max_accuracy_drop: float = MAX_ACCURACY_DROP  # points an int8 model may lose on the test split
    calibration_images: int = CALIBRATION_IMAGES   # training images int8 is calibrated on
    half: bool = False                   # float16 weights (openvino, tflite) or float16 compute (coreml)
    backend: str = "onnxruntime"         # triton: the repository's backend (onnxruntime or openvino)
    name: str | None = None              # triton: the model's name in the repository (default: the run's)
