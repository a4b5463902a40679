"""Self-describing model files: ``model.safetensors`` holds the weights plus a JSON
header (models/header.py: ModelHeader) with the architecture and its arguments, class names
in order, preprocessing, library version and final metrics. Loading rebuilds everything
from the file alone and never unpickles anything (safetensors stores raw tensors and strings only).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..data.preprocess import Preprocessing
from ..core.errors import UserError
from ..core.extras import require
from ..core.files import staged_file
from .header import CHECKPOINT_FORMAT, Architecture, ModelHeader
from .reject import BANK_KEY
from .tasks import SINGLE_LABEL, Task

META_KEY = "imgclass"
SOURCE_KEY = "imgclass_source_sha256"  # an export's metadata: the SHA-256 of the model file it came from
INT8_KEY = "imgclass_int8"              # an int8 export's metadata: its accuracy report (inference/quantize.py)


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


def write_atomic(tensors: dict[str, torch.Tensor], header: ModelHeader, path: Path) -> None:
    """Write tensors + a JSON header so a kill at any moment leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(path) as tmp:  # per process and thread: two writers never share a temporary file
        save_file(_unshared(tensors), str(tmp), metadata={META_KEY: header.to_json()})


def read_onnx_header(path: str | Path) -> ModelHeader:
    """The model file's header that `export --format onnx` stores in the graph's metadata; checked like a
    model file's before anything runs it."""
    import onnx
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not our file"
        raise UserError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    for prop in graph.metadata_props:
        if prop.key == META_KEY:
            return ModelHeader.from_json(prop.value, path)
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


IR_NAME = "model.xml"    # an OpenVINO export is a folder: model.xml + model.bin (inference/openvino.py)
RT_SECTION = "imgclass"  # its rt_info keys: imgclass/header, imgclass/source_sha256, imgclass/int8 (the report)
RT_KEYS = {SOURCE_KEY: "source_sha256", INT8_KEY: "int8"}  # an ONNX metadata key's name in rt_info


def openvino_module():
    """The openvino module, or the one-line error naming the extra."""
    return require("openvino", "openvino", "OpenVINO (export --format openvino, --runtime openvino)")


def is_openvino_export(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return (p.is_dir() and (p / IR_NAME).is_file()) or (p.suffix == ".xml" and p.is_file())


def ir_path(path: str | Path) -> Path:
    """The model.xml of an OpenVINO export given as its folder or its .xml."""
    p = Path(path).expanduser()
    xml = p / IR_NAME if p.is_dir() else p
    if not (xml.suffix == ".xml" and xml.is_file() and xml.with_suffix(".bin").is_file()):
        raise UserError(f"{path} is not an OpenVINO export (expected a folder with {IR_NAME} and model.bin)")
    return xml


def ir_metadata(path: str | Path, key: str) -> str | None:
    """One imgclass rt_info value of an OpenVINO export (None if absent); key: header, or an ONNX metadata key."""
    key = RT_KEYS.get(key, key)
    model = openvino_module().Core().read_model(str(ir_path(path)))
    if not model.has_rt_info([RT_SECTION, key]):
        return None
    return model.get_rt_info([RT_SECTION, key]).astype(str)


def read_ir_header(path: str | Path) -> ModelHeader:
    """The model file's header that `export --format openvino` stores in the IR's rt_info; checked like a model
    file's before anything runs it."""
    text = ir_metadata(path, "header")
    if text is None:
        raise UserError(f"{path} carries no imgclass metadata")
    return ModelHeader.from_json(text, Path(path))


def export_metadata(path: str | Path, key: str) -> str | None:
    """One metadata value of an ONNX file or an OpenVINO export (SOURCE_KEY, INT8_KEY); None if absent."""
    return ir_metadata(path, key) if is_openvino_export(path) else onnx_metadata(path, key)


def read_header(path: Path) -> ModelHeader:
    """The checked header of a model file or a training checkpoint."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not our file"
        raise UserError(f"{path} is not a readable safetensors file ({exc})") from None
    if META_KEY not in meta:
        raise UserError(f"{path} has no imgclass metadata: not an imgclass model file")
    return ModelHeader.from_json(meta[META_KEY], path)


def model_header(arch: Architecture, classes: list[str], pre: Preprocessing, metrics: dict | None = None,
                 tta: str = "none", task: Task = SINGLE_LABEL, weights: dict | None = None,
                 calibration: dict | None = None) -> ModelHeader:
    """The header of a model file this version writes. calibration: {"temperature", and the validation ECE/NLL
    before and after} once fitted, else None."""
    return ModelHeader(arch=arch, classes=tuple(classes), preprocessing=pre, task=task, tta=tta,
                       temperature=(calibration or {}).get("temperature", 1.0), calibration=calibration,
                       metrics=metrics or {}, weights=weights)


def save_model(path: Path, model: nn.Module, header: ModelHeader) -> None:
    """The model's weights, and its rejection's training embeddings (float16) when it has a k-NN rule."""
    tensors = dict(model.state_dict())
    if header.reject is not None and header.reject.bank is not None:
        tensors[BANK_KEY] = torch.from_numpy(header.reject.bank).to(torch.float16)
    write_atomic(tensors, header, path)


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


def _check_shapes(file: Path, header: ModelHeader) -> None:
    """Refuse a file whose header asks for a network other than the tensors it holds, before building it: the
    network is built on PyTorch's meta device (shapes only, no memory) and its tensors' shapes compared with the
    file's (safetensors reads them from the file's own header). A 600-byte file whose header asked for an mlp of
    width 40,000 and depth 30 was built in full first (about 190 GB); a real model's memory is then bounded by the
    size of its file."""
    try:
        with torch.device("meta"):
            skeleton = header.task.build(header.arch, header.classes)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - arguments the architecture cannot build from
        raise UserError(f"{file}: its header describes a network that cannot be built ({exc})") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    with safe_open(str(file), framework="pt") as fh:
        stored = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys() if k != BANK_KEY}
    prefix = "model."
    if header.format == CHECKPOINT_FORMAT and any(k.startswith(prefix) for k in stored):
        stored = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
    if stored != expected:
        differ = sorted(set(stored) ^ set(expected)) or [k for k in expected if stored[k] != expected[k]]
        raise UserError(f"{file}: its header describes a network whose tensors are not the file's ({len(expected)} "
                        f"expected, {len(stored)} stored; first difference: {differ[0]}): refused")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelHeader]:
    """Rebuild the model from its file alone; returns (model in eval mode, header)."""
    file = resolve_model_path(path)
    header = read_header(file)
    _check_shapes(file, header)  # before anything is allocated: the network the header asks for is the file's
    model = header.task.build(header.arch, header.classes)
    tensors = load_file(str(file))
    bank = tensors.pop(BANK_KEY, None)
    if header.reject is not None:
        header = dataclasses.replace(header, reject=header.reject.with_bank(
            None if bank is None else bank.float().numpy(), file))
    prefix = "model."
    if header.format == CHECKPOINT_FORMAT and any(k.startswith(prefix) for k in tensors):
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    return model, header
