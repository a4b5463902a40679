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

from ..core.files import building_folder
from ..models.modelfile import file_sha256
from ..models.modelfile import INT8_KEY, IR_NAME, RT_KEYS, RT_SECTION, SOURCE_KEY, openvino_module as openvino
from .engines import OpenVinoEngine
from .graph import check_parity, default_export_path, export_model, parity_reference

def convert(onnx_path: Path):
    """The ONNX graph as an OpenVINO model (in memory)."""
    return openvino().convert_model(str(onnx_path))


def save_ir(model, folder: Path, header_json: str, source_digest: str, half: bool = False,
            int8_report: dict | None = None) -> Path:
    """Write model.xml + model.bin into `folder` (a building folder: files.building_folder) with the header, the
    model file's SHA-256 and an int8 report in rt_info. half: float16 weights (half the size; computed in the
    CPU's precision)."""
    model.set_rt_info(header_json, [RT_SECTION, "header"])
    model.set_rt_info(source_digest, [RT_SECTION, RT_KEYS[SOURCE_KEY]])
    if int8_report is not None:
        model.set_rt_info(json.dumps(int8_report), [RT_SECTION, RT_KEYS[INT8_KEY]])
    xml = folder / IR_NAME
    openvino().save_model(model, str(xml), compress_to_fp16=half)
    return xml


def export_ir(model: str | Path, out: str | Path | None = None, half: bool = False) -> tuple[Path, float]:
    """`export --format openvino`: the folder (new, or empty; default MODEL_openvino/ beside the model file),
    parity-checked in OpenVINO against PyTorch; returns (folder, max |probability difference|)."""
    openvino()  # the one-line error before any work
    reference = parity_reference(model)
    model_path, predictor, batch, expected = reference
    out = Path(out).expanduser() if out else default_export_path(model_path, "_openvino")
    with tempfile.TemporaryDirectory(prefix="imgclass-openvino-") as tmp:
        onnx_path, _ = export_model(model_path, "onnx", Path(tmp) / "model.onnx", reference)
        with building_folder(out) as building:
            save_ir(convert(onnx_path), building, predictor.header.to_json(), file_sha256(model_path), half)
            got = OpenVinoEngine(building, predictor.pre.img_size)(batch).numpy()
            diff = check_parity("openvino", got, expected, half, predictor.task.answer_scale)
    return out, diff
