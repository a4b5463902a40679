"""Inference's choices and defaults, light to import: the runtime chooser (runtime.py), the quantizer
(quantize.py), the service's settings and the command line read them here (`imgclass export --help` and
`imgclass serve --help` load no torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RUNTIMES = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("auto", "float32", "bf16")
CALIBRATION_IMAGES = 300  # training images the activation ranges are calibrated on (NNCF's default subset size)
MAX_ACCURACY_DROP = 1.0   # points of test score an int8 export may lose (--max-accuracy-drop)


@dataclass(frozen=True, kw_only=True)
class RuntimeChoice:
    """Which engine runs a model file, and in which arithmetic: what predict, submit, evaluate and serve share."""
    runtime: Literal[RUNTIMES] = "auto"  # auto: the fastest measured on this machine for services and large jobs
    # (ONNX Runtime, OpenVINO where installed, int8 where it kept its accuracy; exported once into your runtime
    # cache), else PyTorch; openvino needs the openvino extra
    precision: Literal[PRECISIONS] = "auto"  # PyTorch's (or OpenVINO's) arithmetic; auto: bf16 where the CPU has it
    # natively and answers stay within tolerance of float32
