"""What the registry knows of a model: how to build it and its training defaults."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn


@dataclass
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]       # build(num_classes=, dropout=, **args) -> nn.Module
    description: str
    default_img_size: int = 32            # preferred input side when --img-size is not given
    default_lr: dict = field(default_factory=lambda: {"adamw": 2e-3, "sgd": 0.05})  # peak lr by optimizer
    recipe: dict = field(default_factory=dict)  # training defaults for this model (below the config file and options)
    min_img_size: int = 1                 # smallest input side the architecture can take
    long_recipe: dict = field(default_factory=dict)  # settings over the recipe's when --time-budget fits min_epochs or more

    def lr_for(self, optimizer: str) -> float:
        """The default peak learning rate with this optimizer: adam and rmsprop are adaptive like adamw, so a
        model's adamw rate is theirs too."""
        return self.default_lr.get(optimizer, self.default_lr["adamw"])
