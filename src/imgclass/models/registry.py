"""A listable model registry that refuses duplicate names (as torchvision's does)."""
from __future__ import annotations

import dataclasses

from typing import Callable

import torch.nn as nn

from ..core.errors import UserError
from .spec import ModelSpec
from .zoo import zoo_spec


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, description: str, default_img_size: int = 32, default_lr: dict | None = None,
             recipe: dict | None = None, min_img_size: int = 1, long_recipe: dict | None = None):
    def wrap(fn: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"a model named '{name}' is already registered")
        spec = ModelSpec(name, fn, description, default_img_size, recipe=recipe or {}, min_img_size=min_img_size,
                         long_recipe=long_recipe or {})
        _REGISTRY[name] = dataclasses.replace(spec, default_lr=default_lr) if default_lr else spec
        return fn
    return wrap


def list_models() -> list[ModelSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_spec(name: str) -> ModelSpec:
    """The spec for a built-in name, or for a zoo name 'torchvision:NAME' / 'timm:NAME'."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return zoo_spec(name)
    import difflib
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"unknown model '{name}'{hint}; `imgclass models` lists them, "
                    f"and torchvision:NAME or timm:NAME use those libraries' architectures")


# Arguments of the libraries' loaders, not of an architecture: they name files to read or weights to
# fetch (a crafted model file could set timm's checkpoint_path), so no config or model file may pass them.
# imgclass loads weights itself (--weights, the pretrained sources), always without unpickling.
LOADER_KEYS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict",
                         "checkpoint_path", "cache_dir", "weights", "weights_backbone", "progress",
                         "features_only", "out_indices", "scriptable", "exportable", "no_jit"})
_PLAIN = (bool, int, float, str)


def check_args(name: str, args: dict) -> None:
    """Architecture arguments from a config, the command line or a model file's header: plain values
    (numbers, strings, booleans, lists of them), no loader keys, and for imgclass's own models only the
    names its builder takes (zoo models check theirs when built: an unknown one is a TypeError)."""
    import inspect
    if not isinstance(args, dict):
        raise UserError(f"model arguments for '{name}' must be key=value pairs, not {type(args).__name__}")
    for key, value in args.items():
        if key in LOADER_KEYS:
            raise UserError(f"model argument '{key}' chooses weights or files, not the architecture; "
                            "it is refused (use --weights for starting weights)")
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(v is None or isinstance(v, _PLAIN) for v in items):
            raise UserError(f"model argument '{key}' must be a number, string, boolean or a list of them")
    spec = _REGISTRY.get(name)
    if spec is None:  # a zoo name (or an unknown one, refused when built)
        return
    params = inspect.signature(spec.build).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = sorted(k for k in params if k not in ("num_classes", "dropout"))
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise UserError(f"model '{name}' has no argument {', '.join(map(repr, unknown))}; "
                        f"it takes {', '.join(accepted) or 'none'}")


def create_model(name: str, num_classes: int, dropout: float = 0.0, **args) -> nn.Module:
    spec = get_spec(name)
    check_args(name, args)
    try:
        return spec.build(num_classes=num_classes, dropout=dropout, **args)
    except TypeError as exc:
        raise UserError(f"model '{name}' does not accept these arguments {args}: {exc}") from None
