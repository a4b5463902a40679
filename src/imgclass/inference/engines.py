"""What turns decoded images into probabilities for a Predictor: eager PyTorch (float32, or under bf16
autocast), ONNX Runtime running the exported graph, or OpenVINO running its IR (inference/openvino.py). Each takes uint8 N x 3 x S x S images at the model's
size and returns class probabilities with the model file's normalisation, test-time augmentation and
softmax temperature, so they are interchangeable (prediction.runtime chooses one and checks parity)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..data.preprocess import Preprocessing
from ..core.errors import UserError
from ..models.modelfile import ir_path, openvino_module
from ..models.inference import predict_logits, scoring_batch
from ..models.tasks import SINGLE_LABEL, Task


class TorchEngine:
    runtime = "torch"

    def __init__(self, model: nn.Module, pre: Preprocessing, tta: str, temperature: float, device: torch.device,
                 bf16: bool | None = None, task: Task = SINGLE_LABEL):
        self.model, self.pre, self.tta, self.temperature, self.device = model, pre, tta, temperature, device
        self.task = task  # its probabilities: a softmax over the classes, or a sigmoid per tag
        self.bf16 = device.type == "cuda" if bf16 is None else bf16

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "float32"

    def __call__(self, images: torch.Tensor, features: list[torch.Tensor] | None = None) -> torch.Tensor:
        """features: a list that receives the images' pooled features from the same pass (models.inference)."""
        logits = predict_logits(self.model, images, self.pre, len(images) or 1, self.device, self.tta, self.bf16,
                                features)
        return self.task.probabilities(logits, self.temperature)


class OnnxEngine:
    """The exported graph (pixels 0..255 -> probabilities) in ONNX Runtime on the CPU. precision: what the file
    computes in, float32 or int8 (an int8 export: inference/quantize.py)."""
    runtime = "onnx"

    def __init__(self, path: str | Path, img_size: int, threads: int | None = None, precision: str = "float32"):
        import onnxruntime as ort
        options = ort.SessionOptions()
        # serve() sizes torch's threads to each worker process's share of the cores; ONNX Runtime gets the same
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # No busy-waiting between operators: ONNX Runtime's threads otherwise spin on the cores that the decode
        # threads need. Measured (machine A, Lite0 224 px, 400 JPEGs through predict): 76 images/s spinning,
        # 129 not; the model alone 161 -> 150.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path, self.img_size, self.precision = Path(path), img_size, precision
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        step = scoring_batch(max(1, len(images)), self.img_size, torch.device("cpu"))
        out = [torch.from_numpy(self.session.run(None, {"pixels": images[i:i + step].float().numpy()})[0])
               for i in range(0, len(images), step)]
        return torch.cat(out) if out else torch.empty(0)


PRECISION_HINTS = {"float32": "f32", "bf16": "bf16", "int8": "f32"}  # int8 IR: the layers left float run in f32


class OpenVinoEngine:
    """An OpenVINO export (pixels 0..255 -> probabilities) on the CPU. precision: float32, bf16 (where the CPU
    has it natively) or int8 (an int8 export: its quantized layers in int8, the rest in float32)."""
    runtime = "openvino"

    def __init__(self, path: str | Path, img_size: int, precision: str = "float32", threads: int | None = None):
        ov = openvino_module()
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


Engine = TorchEngine | OnnxEngine | OpenVinoEngine


def images_per_second(engine, images: torch.Tensor, seconds: float) -> float:
    """An engine's best rate over timed passes of `images` lasting `seconds` in all (another process's load only
    ever slows a pass, so the best one is the engine's own speed)."""
    engine(images[:2])  # warm-up (first-call allocations, ONNX Runtime's graph preparation)
    best, spent = 0.0, 0.0
    while spent < seconds:
        started = time.perf_counter()
        engine(images)
        took = time.perf_counter() - started
        best, spent = max(best, len(images) / took), spent + took
    return best
