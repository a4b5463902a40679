"""Running a model on decoded images: batch by batch, in eval mode, with its test-time augmentation.
Training (validation, final scoring), prediction, serving and evaluation all score through here; so do the
facts about the machine they run on (the device, the CPU and whether it computes bf16 natively)."""
from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path

import torch
import torch.nn as nn

from ..data.preprocess import Preprocessing
from ..core.errors import UserError
from .tta import TTA_WIDEST, tta_logits


def pick_device(name: str = "auto") -> torch.device:
    """auto: CUDA when present, else the CPU; or the device named (cpu, cuda, cuda:N), refused when absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available here")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(the CPU's model name, its feature flags) from /proc/cpuinfo; the platform's name and no flags elsewhere."""
    name, flags = platform.processor() or platform.machine(), frozenset()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return name, flags
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == (platform.processor() or platform.machine()):
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return name, flags


def cpu_label() -> str:
    """The CPU's name with the instructions that decide int8 and bf16 speed (AMX, AVX512-VNNI, AVX-VNNI,
    AVX512-BF16), as every speed figure names it."""
    name, flags = cpu_info()
    known = (("amx_int8", "AMX-INT8"), ("amx_bf16", "AMX-BF16"), ("avx512_vnni", "AVX512-VNNI"),
             ("avx_vnni", "AVX-VNNI"), ("avx512_bf16", "AVX512-BF16"))
    has = [label for flag, label in known if flag in flags]
    return f"{name} ({', '.join(has) if has else 'no VNNI, AMX or native bf16'})"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX) with kernels allowed to use it; others emulate
    it, slower than float32. Kernels restricted below AVX-512 (ATEN_CPU_CAPABILITY=avx2 or default,
    ONEDNN_MAX_CPU_ISA=AVX2: what `make test-other-cpu` sets to compute as a CPU without AVX-512 does) count as
    without it, as such a CPU is: the flag alone then chose bf16 autocast on emulated kernels, which no real machine
    runs (and whose results varied between two identical runs, 2026-12-07)."""
    restricted = (os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("avx2", "default")
                  or os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper().startswith(("AVX2", "SSE", "AVX_")))
    return not restricted and bool({"avx512_bf16", "amx_bf16"} & cpu_info()[1])


def scoring_batch(batch_size: int, img_size: int, device: torch.device, tta: str = "none") -> int:
    """Images per scoring pass on a CPU: at most about a million input pixels in one forward pass (1,024 images
    at 32 px, 15 at 260 px; TTA's copies of each image counted), so a batch's activations stay in cache. Measured
    on machine A (EfficientNet-Lite2, 260 px, float32 eval): 26 images/s in batches of 16, 18 in batches of 64, 15
    in batches of 256. The fast network at width 64, 32 px, flip_translate TTA (6 passes, 4 copies at once):
    batches of 1,024 peaked at 3.20 GB and scored 122 images/s, batches of 256 at 1.35 GB and 130 images/s (the
    peak a training process at N=100,000 showed in its final scoring: 3.29 GB)."""
    if device.type != "cpu":
        return batch_size
    pixels = max(1, img_size * img_size * TTA_WIDEST[tta])
    return max(1, min(batch_size, max(8, 2**20 // pixels)))


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities from logits at the model file's softmax temperature (1: as trained; fitted on
    validation by training's calibration). The one place every command turns logits into probabilities."""
    return torch.softmax(logits / temperature, dim=1)


def feature_model(model: nn.Module) -> nn.Module:
    """The part of a model whose `features` are its image embedding: the model itself, or a two-level model's
    fine model (whose backbone the head stage trains on)."""
    fine = getattr(model, "fine", None)
    return model if fine is None else fine


@torch.no_grad()
def compute_features(model: nn.Module, images: torch.Tensor, pre: Preprocessing, batch_size: int,
                     device: torch.device, bf16: bool = False) -> torch.Tensor:
    """Pooled backbone features of every image (the backbone in eval mode, no augmentation): what the head stage
    of fine-tuning trains on, and what `imgclass embed` writes. With bf16 the backbone runs under bf16 autocast
    (2.4x faster for EfficientNet-Lite0 on machine A); the features only feed the head's first stage, the final
    scores are computed in float32."""
    net = feature_model(model)
    net.eval()
    out = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    batch_size = scoring_batch(batch_size, images.shape[-1], device)
    for s in range(0, len(images), batch_size):
        x = pre.normalize(images[s:s + batch_size].to(device))
        with autocast:
            out.append(net.features(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


@contextlib.contextmanager
def recording_features(model: nn.Module):
    """Yields a list that receives the pooled features of every `features` call the model makes while the block
    runs: the embedding of a scored batch at no extra cost (the first call's first rows are the images as they are;
    test-time augmentation's copies follow)."""
    net, seen = feature_model(model), []
    original = net.features

    def features(x: torch.Tensor) -> torch.Tensor:
        out = original(x)
        seen.append(out)
        return out
    net.features = features  # an instance attribute shadows the method for this block only
    try:
        yield seen
    finally:
        del net.features


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, pre: Preprocessing, batch_size: int,
                   device: torch.device, tta: str = "none", bf16: bool | None = None,
                   features: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Logits for a uint8 NCHW tensor, in eval mode, batch by batch (with the model's TTA). bf16: under
    bf16 autocast (None: on CUDA only; a CPU is asked for it by prediction.runtime's choice). features: a list that
    receives each batch's pooled features (float32, on the CPU) from the same pass."""
    bf16 = device.type == "cuda" if bf16 is None else bf16
    model.eval()
    out = []
    if len(images.shape) == 4:  # uint8 NCHW (a tensor, or streamed images)
        batch_size = scoring_batch(batch_size, images.shape[-1], device, tta)
    for start in range(0, len(images), batch_size):
        x = pre.normalize(images[start:start + batch_size].to(device))
        if x.ndim == 4 and device.type in ("cpu", "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda" if device.type == "cuda" else "cpu", dtype=torch.bfloat16,
                            enabled=bf16 and device.type in ("cpu", "cuda")):
            if features is None:
                out.append(tta_logits(model, x, tta).float().cpu())
                continue
            with recording_features(model) as seen:
                out.append(tta_logits(model, x, tta).float().cpu())
            features.append(seen[0][:len(x)].float().cpu())
    return torch.cat(out) if out else torch.empty(0)
