"""The contract every imgclass model follows (after timm): features, head, reset_head."""
from __future__ import annotations

import torch
import torch.nn as nn


def make_head(num_features: int, num_classes: int, hidden: tuple[int, ...] = (), dropout: float = 0.0) -> nn.Module:
    """Dense layers (ReLU, dropout before each) ending in the classification layer; a single
    Linear when there are no hidden layers (the state-dict keys are then head.weight/bias)."""
    if not hidden:
        return nn.Linear(num_features, num_classes)
    layers: list[nn.Module] = []
    width = num_features
    for h in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(width, h), nn.ReLU(inplace=True)] if dropout > 0 else \
                  [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    layers += [nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """Backbone + pooled features + (dropout, dense layers) head: the contract every model follows."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0,
                 head_hidden: tuple[int, ...] = ()):
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.head_hidden = tuple(head_hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = make_head(num_features, num_classes, self.head_hidden, dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def reset_head(self, num_classes: int) -> None:
        p = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        self.head = make_head(self.num_features, num_classes, self.head_hidden, p)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.features(x))
