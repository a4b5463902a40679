"""The contract every imgclass model follows (after timm): features, head, reset_head."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.errors import UserError

# --activation for the built-in networks; leaky_relu with PyTorch's default slope 0.01
ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
               "gelu": nn.GELU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {name!r}")
    return ACTIVATIONS[name]()


def make_head(num_features: int, num_classes: int, hidden: tuple[int, ...] = (), dropout: float = 0.0,
              act: str = "relu") -> nn.Module:
    """Dense layers, each Linear -> activation (ReLU by default) -> Dropout (the Keras course's Dense(100, relu), Dropout(0.2)),
    ending in the classification layer; a single Linear when there are no hidden layers (the
    state-dict keys are then head.weight/bias, and Classifier drops the features before it)."""
    if not hidden:
        return nn.Linear(num_features, num_classes)
    layers: list[nn.Module] = []
    width = num_features
    for h in hidden:
        layers += [nn.Linear(width, h), activation(act)] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        width = h
    layers += [nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """Backbone + pooled features + head: the contract every model follows. Each dropout acts once,
    just before the layer it feeds: on the features when the head is one Linear, after each hidden
    layer's activation otherwise (the last one before the classification layer)."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0,
                 head_hidden: tuple[int, ...] = (), act: str = "relu"):
        super().__init__()
        self.act = act
        self.backbone = backbone
        self.num_features = num_features
        self.head_hidden = tuple(head_hidden)
        self.dropout_p = dropout
        self.dropout = nn.Dropout(dropout) if dropout > 0 and not self.head_hidden else nn.Identity()
        self.head = make_head(num_features, num_classes, self.head_hidden, dropout, act)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def reset_head(self, num_classes: int) -> None:
        self.head = make_head(self.num_features, num_classes, self.head_hidden, self.dropout_p, self.act)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.features(x))
