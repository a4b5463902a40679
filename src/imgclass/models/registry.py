"""A listable model registry that refuses duplicate names (as torchvision's does)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from ..errors import UserError


@dataclass
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]       # build(num_classes=, dropout=, **args) -> nn.Module
    description: str
    default_img_size: int = 32            # preferred input side when --img-size is not given
    default_lr: dict = field(default_factory=lambda: {"adamw": 2e-3, "sgd": 0.05})
    recipe: dict = field(default_factory=dict)  # training defaults for this model (below the config file and options)
    min_img_size: int = 1                 # smallest input side the architecture can take


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, description: str, default_img_size: int = 32, default_lr: dict | None = None,
             recipe: dict | None = None, min_img_size: int = 1):
    def wrap(fn: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"a model named '{name}' is already registered")
        _REGISTRY[name] = ModelSpec(name, fn, description, default_img_size,
                                    default_lr or {"adamw": 2e-3, "sgd": 0.05}, recipe or {}, min_img_size)
        return fn
    return wrap


def list_models() -> list[ModelSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_spec(name: str) -> ModelSpec:
    """The spec for a built-in name, or for a zoo name 'torchvision:NAME' / 'timm:NAME'."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        from .zoo import zoo_spec
        return zoo_spec(name)
    import difflib
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"unknown model '{name}'{hint}; `imgclass models` lists them, "
                    f"and torchvision:NAME or timm:NAME use those libraries' architectures")


def create_model(name: str, num_classes: int, dropout: float = 0.0, **args) -> nn.Module:
    spec = get_spec(name)
    try:
        return spec.build(num_classes=num_classes, dropout=dropout, **args)
    except TypeError as exc:
        raise UserError(f"model '{name}' does not accept these arguments {args}: {exc}") from None
