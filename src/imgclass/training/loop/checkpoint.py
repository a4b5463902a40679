"""Training checkpoints in safetensors (no pickle): model and optimizer tensors, with the
optimizer's scalar state, the loop's progress and the model-file header as JSON.

Written atomically (temp file + rename), so a SIGKILL at any moment leaves a valid file.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file

from ...core.errors import UserError
from ...models.modelfile import read_header, write_atomic
from ...models.header import CHECKPOINT_FORMAT, ModelHeader


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    loop_state: dict[str, Any], model_header: ModelHeader,
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    """extra: callbacks' tensors (the loop's extra_state, e.g. lookahead's averaged weights)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    header = dataclasses.replace(model_header, format=CHECKPOINT_FORMAT, loop=loop_state,
                                 optimizer={"param_groups": opt["param_groups"], "scalars": scalars})
    write_atomic(tensors, header, path)


def load_checkpoint_model(path: Path, model: nn.Module) -> None:
    """Only the model's weights from a checkpoint (a resumed top stage caches activations of its bottom first)."""
    _load_model_tensors(model, load_file(str(path)))


def _load_model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)


def load_checkpoint(path: Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore model and optimizer in place; return the loop state and the extra tensors saved with them."""
    header = read_header(path)
    if header.format != CHECKPOINT_FORMAT or header.loop is None or header.optimizer is None:
        raise UserError(f"{path} is not an imgclass training checkpoint")
    tensors = load_file(str(path))
    _load_model_tensors(model, tensors)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in header.optimizer["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": header.optimizer["param_groups"]})
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return header.loop, extra
