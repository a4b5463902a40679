"""Exported graphs (`imgclass export MODEL --format onnx|torchscript`, and the ONNX Runtime engine the runtime
choice exports for): the ONNX/TorchScript writer and its parity check, in one place below both users.

The exported graph takes images already decoded and resized (float N x 3 x S x S, pixel values
0..255) and returns class probabilities: normalisation, test-time augmentation and softmax are
inside it, so a consumer only has to decode and resize as the stored preprocessing says. The
file carries the model file's header (class names, preprocessing) as metadata. Parity with
PyTorch on a batch of images is checked before the file is kept.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..data.preprocess import Preprocessing
from ..core.errors import UserError
from ..models.tasks import SINGLE_LABEL, Task
from ..models.tta import tta_logits
from ..core.rundir import RunDir
from ..core.files import staged_file
from ..models.modelfile import META_KEY, SOURCE_KEY, file_sha256, resolve_model_path
from .predictor import Predictor

PARITY_TOLERANCE = 1e-4       # max |probability difference| of a float32 export from PyTorch
HALF_PARITY_TOLERANCE = 0.01  # ... of an export with float16 weights (--half); measured 2.3e-3 on Lite0 (OpenVINO,
#                               machine A). A top class may then change only where two classes are within 0.02


class InferenceModule(nn.Module):
    """Pixels 0..255 -> probabilities, with the stored normalisation, TTA, temperature and the task's
    probabilities (a softmax over the classes, or a sigmoid per tag)."""

    def __init__(self, model: nn.Module, pre: Preprocessing, tta: str, temperature: float = 1.0,
                 task: Task = SINGLE_LABEL):
        super().__init__()
        self.model, self.tta, self.temperature, self.task = model.eval(), tta, float(temperature), task
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels - self.mean) / self.std
        return self.task.probabilities(tta_logits(self.model, x, self.tta), self.temperature)


def parity_batch(predictor: Predictor, model_path: Path, n: int = 16) -> torch.Tensor:
    """uint8 images for the parity check: the run's own test images when there are some, else noise."""
    size = predictor.pre.img_size
    run = RunDir.of_model(model_path)
    images = []
    rows = run.eval_predictions("test") if run is not None else []
    root = (run.data_root() or Path("")) if rows else None
    for row in rows[:n]:
        try:
            images.append(predictor.pre.load(root / row["path"]))
        except Exception:  # noqa: BLE001 - noise fills in for files gone since training
            pass
    rng = np.random.RandomState(0)
    while len(images) < n:
        images.append(rng.randint(0, 256, (size, size, 3), dtype=np.uint8))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def parity_reference(model: str | Path) -> tuple[Path, Predictor, torch.Tensor, np.ndarray]:
    """(model file, its Predictor, the parity images as uint8 N x 3 x S x S, PyTorch's probabilities for them):
    what every export is checked against."""
    model_path = resolve_model_path(model)
    predictor = Predictor.load(model_path, "cpu")
    batch = parity_batch(predictor, model_path)
    return model_path, predictor, batch, predictor.probabilities(batch).numpy()


def check_parity(fmt: str, got: np.ndarray, expected: np.ndarray, half: bool = False, scale: float = 1.0) -> float:
    """The largest |probability difference| of an export from PyTorch; a UserError (nothing is kept) beyond the
    tolerance (half: the looser one of float16 weights). scale: the task's unit of answer (models/tasks:
    Task.answer_scale; 1 for probabilities, the labels' standard deviation for a number), so that a number of any
    size is checked as closely as a probability."""
    diff = float(np.abs(np.asarray(got) - expected).max()) / scale
    tolerance = HALF_PARITY_TOLERANCE if half else PARITY_TOLERANCE
    if not diff <= tolerance:
        raise UserError(f"{fmt} export failed parity: max |probability difference| {diff:.2e} > {tolerance}")
    return diff


def default_export_path(model_path: Path, suffix: str) -> Path:
    """Where an export goes without --out: beside the model file (model.onnx, model_openvino/, ...)."""
    return model_path.with_name(model_path.stem + suffix)


def _write_export(fmt: str, module: nn.Module, pixels: torch.Tensor, header: str, model_path: Path, tmp: Path
                  ) -> np.ndarray:
    """Write the ONNX graph (with the header and the model file's SHA-256 in its metadata) or the TorchScript
    module to tmp, load it back and return its probabilities for pixels."""
    if fmt == "onnx":
        import onnx
        import onnxruntime as ort
        batch_dim = torch.export.Dim("batch", min=1, max=4096)
        torch.onnx.export(module, (pixels,), str(tmp), input_names=["pixels"], output_names=["probabilities"],
                          dynamic_shapes={"pixels": {0: batch_dim}}, dynamo=True, external_data=False,
                          verbose=False)
        graph = onnx.load(str(tmp))
        entry = graph.metadata_props.add()
        entry.key, entry.value = META_KEY, header
        source = graph.metadata_props.add()  # which model file this is the export of (the runtime cache checks it)
        source.key, source.value = SOURCE_KEY, file_sha256(model_path)
        onnx.save(graph, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        return session.run(None, {"pixels": pixels.numpy()})[0]
    with torch.no_grad():
        traced = torch.jit.trace(module, pixels)
    torch.jit.save(traced, str(tmp), _extra_files={f"{META_KEY}.json": header})
    loaded = torch.jit.load(str(tmp))
    with torch.no_grad():
        return loaded(pixels).numpy()


def export_model(model: str | Path, fmt: str = "onnx", out: str | Path | None = None,
                 reference: tuple | None = None) -> tuple[Path, float]:
    """Write the ONNX or TorchScript file; returns (path, maximum absolute probability difference). reference:
    parity_reference(model) when the caller has it already (the formats converted from this graph)."""
    if fmt not in ("onnx", "torchscript"):
        raise UserError("--format must be onnx or torchscript")
    model_path, predictor, batch, expected = reference or parity_reference(model)
    module = InferenceModule(predictor.model, predictor.pre, predictor.tta, predictor.temperature,
                             predictor.task).eval()
    out = Path(out) if out else default_export_path(model_path, ".onnx" if fmt == "onnx" else ".torchscript.pt")
    header = predictor.header.to_json()
    with staged_file(out) as tmp:  # per process: serve's workers may export at once; kept only if parity holds
        got = _write_export(fmt, module, batch.float(), header, model_path, tmp)
        diff = check_parity(fmt, got, expected, scale=predictor.task.answer_scale)
    return out, diff
