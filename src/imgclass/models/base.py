"""The contract every imgclass model follows (after timm): features, head, reset_head."""
from __future__ import annotations

import torch
import torch.nn as nn


class Classifier(nn.Module):
    """Backbone + pooled features + (dropout, linear) head: the contract every model follows."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def reset_head(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
