"""Where training runs and in which precision."""
from __future__ import annotations

import torch

from ..errors import UserError
from ..models.inference import cpu_has_native_bf16


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available here")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast. auto: on CUDA, and on CPUs that compute bf16 natively
    (AVX512-BF16 or AMX): on machine A (AMD EPYC with avx512_bf16) the fast model trains 1.73x (width 32)
    and 1.85x (width 64) faster than in float32 (batch 512, channels-last). CPUs without it would emulate
    bf16, so auto keeps float32 there."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    return device.type == "cpu" and cpu_has_native_bf16()
