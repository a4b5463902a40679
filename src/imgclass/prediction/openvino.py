"""OpenVINO (the `openvino` extra): `export --format openvino` and `--runtime openvino`.

An OpenVINO export is a folder holding model.xml + model.bin (OpenVINO's IR), converted by OpenVINO's own
`convert_model` from the parity-checked ONNX graph, so it keeps that graph's contract: pixels 0..255 (float
N x 3 x S x S) in, probabilities out, normalisation, TTA and calibration inside. The model file's header and
SHA-256 sit in the IR's rt_info (its metadata), read back and checked like a model file's header. A folder,
because the IR is two files that must match: it is built beside and renamed into place whole.

Precision: OpenVINO's CPU plugin runs in bf16 by default on CPUs with native bf16 (AVX512-BF16, AMX), and
that changes probabilities by up to 0.029 (machine A, Lite0 at 96 px); float32 is asked for explicitly
(INFERENCE_PRECISION_HINT) unless bf16 is chosen, so an export's parity check means what it says.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..extras import require
from ..files import building_folder
from ..modelfile import file_sha256
from ..models.header import ModelHeader
from ..models.inference import scoring_batch
from .graph import check_parity, default_export_path, export_model, parity_reference

IR_NAME = "model.xml"
RT_SECTION = "imgclass"  # rt_info keys: imgclass/header, imgclass/source_sha256, imgclass/int8 (the report)
PRECISION_HINTS = {"float32": "f32", "bf16": "bf16", "int8": "f32"}  # int8 IR: the layers left float run in f32


def openvino():
    return require("openvino", "openvino", "OpenVINO (export --format openvino, --runtime openvino)")


def ir_path(path: str | Path) -> Path:
    """The model.xml of an OpenVINO export given as its folder or its .xml."""
    p = Path(path).expanduser()
    xml = p / IR_NAME if p.is_dir() else p
    if not (xml.suffix == ".xml" and xml.is_file() and xml.with_suffix(".bin").is_file()):
        raise UserError(f"{path} is not an OpenVINO export (expected a folder with {IR_NAME} and model.bin)")
    return xml


def is_openvino_export(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return (p.is_dir() and (p / IR_NAME).is_file()) or (p.suffix == ".xml" and p.is_file())


def convert(onnx_path: Path):
    """The ONNX graph as an OpenVINO model (in memory)."""
    return openvino().convert_model(str(onnx_path))


def save_ir(model, folder: Path, header_json: str, source_digest: str, half: bool = False,
            int8_report: dict | None = None) -> Path:
    """Write model.xml + model.bin into `folder` (a building folder: files.building_folder) with the header, the
    model file's SHA-256 and an int8 report in rt_info. half: float16 weights (half the size; computed in the
    CPU's precision)."""
    model.set_rt_info(header_json, [RT_SECTION, "header"])
    model.set_rt_info(source_digest, [RT_SECTION, "source_sha256"])
    if int8_report is not None:
        model.set_rt_info(json.dumps(int8_report), [RT_SECTION, "int8"])
    xml = folder / IR_NAME
    openvino().save_model(model, str(xml), compress_to_fp16=half)
    return xml


def ir_metadata(path: str | Path, key: str) -> str | None:
    """One imgclass rt_info value of an OpenVINO export (None if absent)."""
    model = openvino().Core().read_model(str(ir_path(path)))
    if not model.has_rt_info([RT_SECTION, key]):
        return None
    return model.get_rt_info([RT_SECTION, key]).astype(str)


def read_ir_header(path: str | Path) -> ModelHeader:
    """The model file's header stored in the export, checked like a model file's before anything runs it."""
    text = ir_metadata(path, "header")
    if text is None:
        raise UserError(f"{path} carries no imgclass metadata")
    return ModelHeader.from_json(text, Path(path))


class OpenVinoEngine:
    """An OpenVINO export (pixels 0..255 -> probabilities) on the CPU. precision: float32, bf16 (where the CPU
    has it natively) or int8 (an int8 export: its quantized layers in int8, the rest in float32)."""
    runtime = "openvino"

    def __init__(self, path: str | Path, img_size: int, precision: str = "float32", threads: int | None = None):
        ov = openvino()
        if precision not in PRECISION_HINTS:
            raise UserError(f"OpenVINO precision must be one of {', '.join(PRECISION_HINTS)}")
        self.path, self.img_size, self.precision = ir_path(path), img_size, precision
        # serve() sizes torch's threads to each worker's share of the cores; OpenVINO gets the same
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
                  "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
        self.compiled = ov.Core().compile_model(str(self.path), "CPU", config)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        step = scoring_batch(max(1, len(images)), self.img_size, torch.device("cpu"))
        out = [torch.from_numpy(np.asarray(self.compiled(images[i:i + step].float().numpy())[0]))
               for i in range(0, len(images), step)]
        return torch.cat(out) if out else torch.empty(0)


def export_ir(model: str | Path, out: str | Path | None = None, half: bool = False) -> tuple[Path, float]:
    """`export --format openvino`: the folder (new, or empty; default MODEL_openvino/ beside the model file),
    parity-checked in OpenVINO against PyTorch; returns (folder, max |probability difference|)."""
    openvino()  # the one-line error before any work
    model_path, predictor, batch, expected = parity_reference(model)
    out = Path(out).expanduser() if out else default_export_path(model_path, "_openvino")
    with tempfile.TemporaryDirectory(prefix="imgclass-openvino-") as tmp:
        onnx_path, _ = export_model(model_path, "onnx", Path(tmp) / "model.onnx")
        with building_folder(out) as building:
            save_ir(convert(onnx_path), building, predictor.header.to_json(), file_sha256(model_path), half)
            got = OpenVinoEngine(building, predictor.pre.img_size)(batch).numpy()
            diff = check_parity("openvino", got, expected, half)
    return out, diff
