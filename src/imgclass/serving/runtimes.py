"""What the service runs: the PyTorch model, or its ONNX export in ONNX Runtime. Both decode and
resize with the Preprocessing stored in the model file, so answers match `imgclass predict`."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..data.decode import ImageDecodeError
from ..data.preprocess import Preprocessing
from ..export.exporter import export_model, read_onnx_header
from ..modelfile import check_header
from ..prediction.predictor import Predictor


class Runtime:
    header: dict[str, Any]
    pre: Preprocessing
    name: str

    def probabilities(self, pixels_uint8_nhwc: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, blob: bytes) -> np.ndarray | dict[str, Any]:
        """The image at the model's size (H x W x 3 uint8), or {"error": reason, "status": 400|415}."""
        if not blob:
            return {"error": "empty file", "status": 400}
        try:
            return self.pre.load(blob)
        except ImageDecodeError as exc:
            reason = str(exc)
            return {"error": reason, "status": 415 if reason.startswith(("not an image", "cannot open")) else 400}
        except Exception as exc:  # noqa: BLE001 - an odd decoder failure fails this item only, not the batch
            return {"error": f"cannot decode this image ({type(exc).__name__})", "status": 400}

    def explain(self, blob: bytes) -> dict[str, Any]:
        return {"error": f"heatmaps need the torch runtime (this service runs {self.name})", "status": 501}

    def predict(self, blobs: list[bytes], top_k: int) -> list[dict[str, Any]]:
        """One result per blob: {"top_k": [...]} or {"error": reason, "status": 400|415}."""
        arrays, index, out = [], [], [None] * len(blobs)
        for i, blob in enumerate(blobs):
            decoded = self.decode(blob)
            if isinstance(decoded, dict):
                out[i] = decoded
            else:
                arrays.append(decoded)
                index.append(i)
        if arrays:
            probs = self.probabilities(np.stack(arrays))
            classes = self.header["classes"]
            k = max(1, min(top_k, len(classes)))
            for row, i in zip(probs, index):
                order = np.argsort(-row, kind="stable")[:k]
                out[i] = {"top_k": [{"label": classes[j], "probability": float(row[j])} for j in order]}
        return out


class TorchRuntime(Runtime):
    name = "torch"

    def __init__(self, model: str | Path, max_pixels: int | None = None, device: str = "cpu"):
        self.predictor = Predictor.load(model, device, max_pixels)
        self.header, self.pre = self.predictor.header, self.predictor.pre

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        import torch
        return self.predictor.probabilities(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()).numpy()

    def explain(self, blob: bytes) -> dict[str, Any]:
        """The Grad-CAM heatmap of the top class over the image: {"label", "probability", "png"} or an error."""
        decoded = self.decode(blob)
        if isinstance(decoded, dict):
            return decoded
        import io
        import torch
        from PIL import Image
        from ..prediction.explain import overlays
        images = torch.from_numpy(np.ascontiguousarray(decoded[None])).permute(0, 3, 1, 2).contiguous()
        probs = self.predictor.probabilities(images)[0]
        top = int(probs.argmax())
        overlay = overlays(self.predictor, images, [top])[0]
        buf = io.BytesIO()
        Image.fromarray(overlay).save(buf, format="PNG")
        return {"label": self.header["classes"][top], "probability": float(probs[top]), "png": buf.getvalue()}


class OnnxRuntime(Runtime):
    name = "onnx"

    def __init__(self, model: str | Path, max_pixels: int | None = None):
        import onnxruntime as ort
        path = Path(model)
        if path.suffix != ".onnx":  # a run folder or model file: export it first (parity-checked)
            self._tmp = tempfile.TemporaryDirectory()
            path, _ = export_model(model, "onnx", Path(self._tmp.name) / "model.onnx")
        self.header = read_onnx_header(path)
        check_header(self.header, path)
        self.pre = Preprocessing.from_dict(self.header["preprocessing"], max_pixels)
        options = ort.SessionOptions()
        import torch  # the thread count serve() sized for this process's concurrent requests
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)
        return self.session.run(None, {"pixels": x})[0]


def load_runtime(model: str | Path, runtime: str = "torch", max_pixels: int | None = None) -> Runtime:
    return OnnxRuntime(model, max_pixels) if runtime == "onnx" else TorchRuntime(model, max_pixels)
