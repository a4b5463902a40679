"""Models imgclass defines itself, for training from scratch on small images."""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import Classifier
from .base import activation as act_layer  # the builders' own argument is named activation
from .registry import register


def conv_bn(cin: int, cout: int, stride: int = 1, act: str = "relu") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), act_layer(act))


@register("mlp", "multilayer perceptron on the flattened image (a baseline); args: width, depth, activation",
          default_img_size=16,
          default_lr={"adamw": 1e-3, "sgd": 0.05})
def mlp(num_classes: int, dropout: float = 0.0, img_size: int = 16, width: int = 512, depth: int = 2,
        head: tuple[int, ...] = (), norm: bool = True, activation: str = "relu") -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    features = 3 * img_size * img_size
    for _ in range(depth):
        layers += [nn.Linear(features, width)] + ([nn.BatchNorm1d(width)] if norm else []) + [act_layer(activation)]
        features = width
    return Classifier(nn.Sequential(*layers), features, num_classes, dropout, tuple(head), activation)


@register("cnn", "small plain CNN (conv-BN-ReLU pairs, max pooling, global average pool); args: width, depth, "
          "activation")
def cnn(num_classes: int, dropout: float = 0.0, width: int = 32, depth: int = 3, head: tuple[int, ...] = (),
        activation: str = "relu") -> nn.Module:
    layers: list[nn.Module] = []
    cin = 3
    for i in range(depth):
        cout = width * 2 ** i
        layers += [conv_bn(cin, cout, 1, activation), conv_bn(cout, cout, 1, activation), nn.MaxPool2d(2, ceil_mode=True)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Classifier(nn.Sequential(*layers), cin, num_classes, dropout, tuple(head), activation)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: str = "relu"):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride, act),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


@register("resnet", "residual network for small images (CIFAR-style stem, 3 stages); args: width, depth, activation")
def resnet(num_classes: int, dropout: float = 0.0, width: int = 32, depth: int = 2,
           head: tuple[int, ...] = (), activation: str = "relu") -> nn.Module:
    """Three stages of `depth` basic blocks at widths w, 2w, 4w; a 3x3 stem keeps small inputs' detail."""
    layers: list[nn.Module] = [conv_bn(3, width, 1, activation)]
    cin = width
    for stage in range(3):
        cout = width * 2 ** stage
        for block in range(depth):
            layers.append(BasicBlock(cin, cout, 2 if stage > 0 and block == 0 else 1, activation))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Classifier(nn.Sequential(*layers), cin, num_classes, dropout, tuple(head), activation)
