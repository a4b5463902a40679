"""Self-describing model files: ``model.safetensors`` holds the weights plus a JSON
header with the architecture and its arguments, class names in order, preprocessing,
library version and final metrics. Loading rebuilds everything from the file alone
and never unpickles anything (safetensors stores raw tensors and strings only).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .data.preprocess import Preprocessing
from .errors import UserError
from .models.hierarchy import STRATEGIES, build
from .models.registry import check_args
from .version import __version__

FORMAT = "imgclass-model"
FORMAT_VERSION = 1
META_KEY = "imgclass"
SOURCE_KEY = "imgclass_source_sha256"  # an export's metadata: the SHA-256 of the model file it came from


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied weights): give each its own copy."""
    seen, out = set(), {}
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = t
    return out


def write_atomic(tensors: dict[str, torch.Tensor], header: dict[str, Any], path: Path) -> None:
    """Write tensors + a JSON header so a kill at any moment leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(_unshared(tensors), str(tmp), metadata={META_KEY: json.dumps(header)})
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_onnx_header(path: str | Path) -> dict[str, Any]:
    """The model file's header that `export --format onnx` stores in the graph's metadata; checked like a
    model file's before anything runs it."""
    import onnx
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not our file"
        raise UserError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    for prop in graph.metadata_props:
        if prop.key == META_KEY:
            header = json.loads(prop.value)
            check_header(header, Path(path))
            return header
    raise UserError(f"{path} carries no imgclass metadata")


def file_sha256(path: str | Path) -> str:
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_metadata(path: str | Path, key: str) -> str | None:
    """One metadata value of an ONNX file (None if absent)."""
    import onnx
    graph = onnx.load(str(path), load_external_data=False)
    return next((prop.value for prop in graph.metadata_props if prop.key == key), None)


def read_header(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not our file"
        raise UserError(f"{path} is not a readable safetensors file ({exc})") from None
    if META_KEY not in meta:
        raise UserError(f"{path} has no imgclass metadata: not an imgclass model file")
    try:
        header = json.loads(meta[META_KEY])
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise UserError(f"{path} has a damaged imgclass header (not a JSON object)")
    return header


def check_header(header: dict[str, Any], file: Path) -> None:
    """A model file is data from anywhere: its header must describe a model, with plain architecture
    arguments (registry.check_args refuses loader keys such as timm's checkpoint_path) and sane
    preprocessing, before anything is built from it."""

    def bad(what: str) -> UserError:
        return UserError(f"{file} has a malformed header: {what}")
    arch, classes = header.get("arch"), header.get("classes")
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise bad("'arch' must name the architecture")
    dropout = arch.get("dropout", 0.0)
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise bad("'arch.dropout' must be a number in [0, 1)")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad("'classes' must be a non-empty list of names")
    try:
        Preprocessing.from_dict(header.get("preprocessing") or {})
    except ValueError as exc:
        raise bad(str(exc)) from None
    temperature = (header.get("inference") or {}).get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise bad("'inference.temperature' must be a positive number")
    hierarchy = header.get("hierarchy")
    if hierarchy is not None:
        coarse, parents = hierarchy.get("coarse_classes"), hierarchy.get("parents")
        if (hierarchy.get("strategy") not in STRATEGIES or not isinstance(coarse, list)
                or not isinstance(parents, list) or len(parents) != len(classes)
                or not all(isinstance(p, int) and 0 <= p < len(coarse) for p in parents)):
            raise bad("'hierarchy' does not match the classes")
    try:
        check_args(arch["name"], arch.get("args", {}))
    except UserError as exc:
        raise bad(str(exc)) from None


def model_header(arch: dict, classes: list[str], pre: Preprocessing, metrics: dict | None = None,
                 tta: str = "none", hierarchy: dict | None = None, weights: dict | None = None,
                 calibration: dict | None = None) -> dict:
    """calibration: {"temperature", and the validation ECE/NLL before and after} once fitted, else None."""
    return {
        "hierarchy": hierarchy,            # None, or {"strategy", "coarse_classes", "parents"}
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "imgclass_version": __version__,
        "arch": arch,                       # {"name", "args", "dropout"}
        "classes": list(classes),
        "preprocessing": pre.to_dict(),
        # test-time augmentation and the softmax temperature (calibration) every command applies
        "inference": {"tta": tta, "temperature": (calibration or {}).get("temperature", 1.0)},
        "calibration": calibration,
        "metrics": metrics or {},
        "weights": weights,                # None (from scratch), or where the starting weights came from
    }


def save_model(path: Path, model: nn.Module, header: dict) -> None:
    write_atomic(model.state_dict(), header, path)


def resolve_model_path(path: str | Path) -> Path:
    """A run folder, a hub folder (export --format hub) or a model file -> the model file."""
    p = Path(path).expanduser()
    if p.is_dir():
        # a hub folder's model.safetensors may be timm's layout: its imgclass file comes first
        for candidate in (p / "imgclass.safetensors", p / "model.safetensors", p / "checkpoints" / "best.safetensors"):
            if candidate.is_file():
                return candidate
        raise UserError(f"no model in {p} (expected model.safetensors: has training finished?)")
    if not p.is_file():
        raise UserError(f"model not found: {p}")
    return p


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from its file alone; returns (model in eval mode, header)."""
    file = resolve_model_path(path)
    header = read_header(file)
    if header.get("format") not in (FORMAT, "imgclass-checkpoint"):
        raise UserError(f"{file} is not an imgclass model file")
    if not isinstance(header.get("format_version", 0), int) or header.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{file} was written by a newer imgclass ({header.get('imgclass_version')}); upgrade")
    check_header(header, file)
    arch = header["arch"]
    model = build(arch, header["classes"], header.get("hierarchy"))
    tensors = load_file(str(file))
    prefix = "model."
    if any(k.startswith(prefix) for k in tensors) and header.get("format") == "imgclass-checkpoint":
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    return model, header
