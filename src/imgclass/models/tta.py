"""Test-time augmentation: averaging logits over mirrored and shifted copies (airbench's
"level 2": half weight on the image and its mirror, half on two 1-pixel translations
and their mirrors). Used by every command through the mode stored in the model file."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

TTA_MODES = ("none", "flip", "flip_translate")
TTA_PASSES = {"none": 1, "flip": 2, "flip_translate": 6}  # forward passes per image each mode costs
TTA_WIDEST = {"none": 1, "flip": 2, "flip_translate": 4}  # copies of each image in tta_logits' largest forward pass


def tta_logits(model: nn.Module, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    if mode == "none":
        return model(x)
    # unflatten(0, (k, -1)) rather than slicing by len(x) or chunk(): traced and exported graphs
    # keep a dynamic batch size, batch 1 included
    base = model(torch.cat([x, x.flip(3)])).unflatten(0, (2, -1)).mean(0)
    if mode == "flip":
        return base
    h, w = x.shape[2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = torch.cat([padded[:, :, 0:h, 0:w], padded[:, :, 2:h + 2, 2:w + 2]])
    moved = model(torch.cat([shifted, shifted.flip(3)])).unflatten(0, (4, -1)).mean(0)
    return 0.5 * base + 0.5 * moved
