"""Any torchvision or timm architecture by name, with its head replaced for our classes."""
from __future__ import annotations

import torch.nn as nn

from ..core.errors import UserError
from .base import Classifier
from .spec import ModelSpec


def _torchvision_backbone(arch: str, **args) -> tuple[nn.Module, int]:
    import torchvision
    net = torchvision.models.get_model(arch, weights=None, **args)
    # The classifier is the last Linear layer (fc, classifier[-1], heads.head ...): replace it by Identity.
    last = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise UserError(f"torchvision model '{arch}' has no linear classifier layer to replace")
    layer = net.get_submodule(last[-1])
    net.set_submodule(last[-1], nn.Identity())
    return net, layer.in_features


def _timm_backbone(arch: str, **args) -> tuple[nn.Module, int]:
    import timm
    net = timm.create_model(arch, pretrained=False, num_classes=0, **args)  # num_classes=0: pooled features
    return net, net.num_features


def _timm_input_size(arch: str) -> int:
    import timm
    try:
        cfg = timm.get_pretrained_cfg(arch)
        return int(cfg.input_size[-1]) if cfg is not None else 224
    except Exception:  # noqa: BLE001 - unknown configs fall back to the ImageNet default
        return 224


def _torchvision_input_size(arch: str) -> int:
    """The crop size of the model's published weights (299 for inception_v3), else ImageNet's 224."""
    import torchvision
    try:
        return int(torchvision.models.get_model_weights(arch).DEFAULT.transforms().crop_size[0])
    except Exception:  # noqa: BLE001 - models published without weights
        return 224


def zoo_spec(name: str) -> ModelSpec:
    source, _, arch = name.partition(":")
    if source not in ("torchvision", "timm") or not arch:
        raise UserError(f"unknown model '{name}': use torchvision:NAME or timm:NAME")
    backbone_fn = _torchvision_backbone if source == "torchvision" else _timm_backbone
    if source == "torchvision":
        import torchvision
        if arch not in torchvision.models.list_models():
            raise UserError(f"torchvision has no model '{arch}'; `imgclass models --zoo torchvision` lists them")
        img_size = _torchvision_input_size(arch)
    else:
        import timm
        if not timm.list_models(arch):
            raise UserError(f"timm has no model '{arch}'; `imgclass models --zoo timm` lists them")
        img_size = _timm_input_size(arch)

    def build(num_classes: int, dropout: float = 0.0, head: list[int] | tuple[int, ...] = (), **args) -> nn.Module:
        backbone, width = backbone_fn(arch, **args)
        return Classifier(backbone, width, num_classes, dropout, tuple(head))

    return ModelSpec(name, build, f"{source} {arch}", default_img_size=img_size,
                     default_lr={"adamw": 1e-3, "sgd": 0.05})
