"""`imgclass export MODEL --format tflite` (the `tflite` extra): a TensorFlow Lite / LiteRT file for phones and
boards.

Converted by onnx2tf (in a child process: TensorFlow and PyTorch's Triton crash one process that loads both,
TensorFlow first) from the parity-checked ONNX graph, so it keeps that graph's contract (pixels 0..255 in,
probabilities out, normalisation, TTA and calibration inside), with one difference TFLite asks for: the input
is N x S x S x 3 (NHWC, TFLite's layout; onnx2tf transposes the graph), the batch size free. The model file's
header and SHA-256 are the flatbuffer's metadata entries "imgclass" and "imgclass_source_sha256" (written with
the TFLite schema that LiteRT ships, as TensorFlow's flatbuffer_utils does). Parity is checked by LiteRT's own interpreter (ai-edge-litert) before the file
takes its name.

litert-torch (PyTorch straight to TFLite) was the first choice; its dependency xdsl pins typing-extensions
below 4.13, which FastAPI's pydantic cannot use (pip's resolver refuses the pair, 2026-12-02), so the ONNX
path is the one that installs beside imgclass.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError
from ..core.extras import require, require_installed
from ..core.files import staged_file
from ..models.modelfile import META_KEY, SOURCE_KEY, file_sha256
from ..models.header import ModelHeader
from ..inference.graph import check_parity, default_export_path, export_model, parity_reference

PURPOSE = "TFLite export (onnx2tf, TensorFlow and LiteRT)"


# the child process's script: onnx2tf's conversion, traced at batch 1 (the batch dimension stays free)
CONVERT = ("import sys, onnx2tf; onnx2tf.convert(input_onnx_file_path=sys.argv[1], output_folder_path=sys.argv[2], "
           "overwrite_input_shape=[sys.argv[3]], non_verbose=True)")


def _convert(onnx_path: Path, folder: Path, size: int) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")  # TensorFlow's start-up lines about GPUs and oneDNN
    done = subprocess.run([sys.executable, "-c", CONVERT, str(onnx_path), str(folder), f"pixels:1,3,{size},{size}"],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise UserError(f"the TFLite conversion (onnx2tf) failed: {tail}")


def export_tflite(model: str | Path, out: str | Path | None = None, half: bool = False) -> tuple[Path, float]:
    """The .tflite file (default MODEL.tflite beside the model file; half: float16 weights), parity-checked in
    LiteRT against PyTorch; returns (path, max |probability difference|)."""
    require_installed("onnx2tf", "tflite", PURPOSE)
    require("ai_edge_litert.interpreter", "tflite", PURPOSE)
    reference = parity_reference(model)
    model_path, predictor, batch, expected = reference
    out = Path(out).expanduser() if out else default_export_path(model_path, ".tflite")
    size = predictor.pre.img_size
    with tempfile.TemporaryDirectory(prefix="imgclass-tflite-") as tmp:
        onnx_path, _ = export_model(model_path, "onnx", Path(tmp) / "model.onnx", reference)
        _convert(onnx_path, Path(tmp) / "tf", size)
        converted = Path(tmp) / "tf" / f"model_{'float16' if half else 'float32'}.tflite"
        if not converted.is_file():
            raise UserError(f"onnx2tf wrote no {converted.name}: the TFLite conversion failed")
        _write_metadata(converted, {META_KEY: predictor.header.to_json(), SOURCE_KEY: file_sha256(model_path)})
        diff = check_parity("tflite", run_tflite(converted, batch), expected, half, predictor.task.answer_scale)
        with staged_file(out) as staged:
            shutil.copyfile(converted, staged)
    return out, diff


def run_tflite(path: Path, images: torch.Tensor, threads: int | None = None) -> np.ndarray:
    """Probabilities of uint8 N x 3 x S x S images from a .tflite export, in LiteRT's interpreter."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(path), num_threads=threads or torch.get_num_threads())
    pixels = images.float().permute(0, 2, 3, 1).contiguous().numpy()  # NHWC
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(pixels.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, pixels)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def _read_model(path: Path):
    from ai_edge_litert import schema_py_generated as schema
    return schema, schema.ModelT.InitFromPackedBuf(bytearray(Path(path).read_bytes()), 0)


def _write_metadata(path: Path, entries: dict[str, str]) -> None:
    """Add named metadata entries (each a buffer of UTF-8 bytes) to a .tflite flatbuffer, in place."""
    import flatbuffers
    schema, model = _read_model(path)
    model.metadata = list(model.metadata or [])
    for name, text in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    Path(path).write_bytes(builder.Output())


def tflite_metadata(path: str | Path) -> dict[str, str]:
    """A .tflite file's metadata entries (name -> text)."""
    require("ai_edge_litert.schema_py_generated", "tflite", PURPOSE)
    _, model = _read_model(Path(path))
    out = {}
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        out[name] = bytes(np.asarray(model.buffers[entry.buffer].data, dtype=np.uint8)).decode("utf-8", "replace")
    return out


def read_tflite_header(path: str | Path) -> ModelHeader:
    """The model file's header stored in a .tflite export, checked like a model file's."""
    text = tflite_metadata(path).get(META_KEY)
    if text is None:
        raise UserError(f"{path} carries no imgclass metadata")
    return ModelHeader.from_json(text, Path(path))
