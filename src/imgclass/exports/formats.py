"""`imgclass export MODEL --format F`: one entry for every format, each with the same contract (decoded, resized
pixels 0..255 in, probabilities out; normalisation, TTA and calibration inside; class names and preprocessing
in the file's metadata) and each checked before it is kept:

  onnx, torchscript   parity with PyTorch in ONNX Runtime / TorchScript            (inference/graph.py)
  openvino            a folder (model.xml + model.bin), parity in OpenVINO          (inference/openvino.py)
  tflite              parity in LiteRT's interpreter; NHWC input                     (export/tflite.py)
  coreml              an .mlpackage; the spec checked (parity needs macOS)          (export/coreml.py)
  triton              a Triton Inference Server model repository                    (export/triton.py)
  hub                 a folder to hand the model on, with its model card            (export/hub.py)

`--quantize int8` (onnx, openvino) writes an int8 model only when it keeps its accuracy (inference/quantize.py);
`--half` stores float16 weights (openvino, tflite; Core ML computes in float16) under a looser parity check.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..inference.quantize import Int8Report
from .settings import FORMATS, HALF_FORMATS, INT8_FORMATS, ExportSettings

@dataclass(frozen=True)
class Exported:
    """What an export wrote and what was checked."""
    path: Path
    parity: float | None            # max |probability difference| from PyTorch; None where nothing ran here
    checks: tuple[str, ...] = ()    # what else was checked or measured, one line each (the int8 report, ...)
    int8: Int8Report | None = None  # both models' scores, sizes and speeds, for an int8 export

    def lines(self) -> list[str]:
        parity = ("" if self.parity is None else
                  f" (parity with PyTorch: max |probability difference| {self.parity:.2e})")
        return [f"wrote {self.path}{parity}", *self.checks]


def _refuse(fmt: str, settings: ExportSettings) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}")
    if settings.quantize not in (None, "int8"):
        raise UserError("--quantize takes int8")
    if settings.quantize and fmt not in INT8_FORMATS:
        raise UserError(f"--quantize int8 is for --format {', '.join(INT8_FORMATS)}")
    if settings.half and fmt not in HALF_FORMATS:
        raise UserError(f"--half is for --format {', '.join(HALF_FORMATS)}")
    if settings.half and settings.quantize:
        raise UserError("--half and --quantize int8 are two different exports: choose one")


def export(model: str | Path, fmt: str = "onnx", out: str | Path | None = None,
           settings: ExportSettings = ExportSettings()) -> Exported:
    """Write one export of a model file (run folder, model.safetensors or hub folder) and say what was checked."""
    _refuse(fmt, settings)
    if fmt == "hub":
        from .hub import export_hub
        if not out:
            raise UserError("--format hub needs --out NEW_FOLDER")
        int8 = (settings.max_accuracy_drop, settings.calibration_images) if settings.quantize else None
        path, report = export_hub(model, out, int8)
        return Exported(path, None, ("model card: README.md", *(report.lines() if report else ())), report)
    if settings.quantize == "int8":
        from ..inference.quantize import export_int8
        path, report = export_int8(model, fmt, out, settings.max_accuracy_drop, settings.calibration_images)
        return Exported(path, None, tuple(report.lines()), report)
    if fmt in ("onnx", "torchscript"):
        from ..inference.graph import export_model
        return Exported(*export_model(model, fmt, out))
    if fmt == "openvino":
        from ..inference.openvino import export_ir
        return Exported(*export_ir(model, out, settings.half))
    if fmt == "tflite":
        from .tflite import export_tflite
        path, diff = export_tflite(model, out, settings.half)
        return Exported(path, diff, ("input: N x S x S x 3 (NHWC), pixels 0..255",))
    if fmt == "coreml":
        from .coreml import export_coreml
        path, diff, checks = export_coreml(model, out, settings.half)
        return Exported(path, diff, tuple(checks))
    from .triton import export_triton
    path, diff, checks = export_triton(model, out, settings.backend, settings.name)
    return Exported(path, diff, tuple(checks))
