"""Optional integrations (pyproject's extras): import one, or stop with the one line that names its extra.
The core install stays lean; whoever needs OpenVINO, TFLite, Core ML or Parquet installs that extra."""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import UserError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """`module`, imported; a UserError naming the extra when it is not installed (purpose: what needs it)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{purpose} needs the {extra} extra: pip install 'imgclass[{extra}]'") from None


def require_installed(module: str, extra: str, purpose: str) -> None:
    """`require` without importing: for a module run in a child process only (TensorFlow, which crashes a
    process that loads PyTorch's Triton after it)."""
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{purpose} needs the {extra} extra: pip install 'imgclass[{extra}]'")


def available(module: str) -> bool:
    """Whether an optional module is installed (the runtime choice times OpenVINO only where it is)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
