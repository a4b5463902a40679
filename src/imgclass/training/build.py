"""Building the model a plan describes: its data-dependent initialisation and its starting weights
(--pretrained, --weights). Shared by train and lr-find, so both start from the same network."""
from __future__ import annotations

from typing import Callable

import torch

from ..config import TrainConfig
from ..data.images import ImageTensors
from ..data.preprocess import Preprocessing
from ..errors import UserError
from ..models.pretrained import find_origin, pretrained_state
from .transfer import apply_weights_file, load_pretrained


def init_from_data(model, train: ImageTensors, pre: Preprocessing, seed: int) -> None:
    """Data-dependent initialisation, e.g. the fast model's whitening layer, from up to 5,000 images."""
    if hasattr(model, "init_from_data"):
        sample = train.images[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:5000]]
        model.init_from_data(pre.normalize(sample))


def load_starting_weights(model, cfg: TrainConfig, fresh: bool, two_level: bool, classes: list[str],
                           pre: Preprocessing, say: Callable[[str], None]) -> dict | None:
    """--pretrained / --weights into the model on a fresh start (a resumed run has them in its checkpoint);
    returns where the starting weights came from, for the model file and the report."""
    weights_origin = None
    if cfg.pretrained:
        origin = find_origin(cfg.model)
        if fresh:
            state, origin = pretrained_state(cfg.model)
            n = load_pretrained(model, state, f"{cfg.model} published weights")
            say(f"loaded {n} pretrained backbone tensors for {cfg.model}"
                + (f": {origin.describe()}" if origin is not None else ""))
        weights_origin = origin.to_dict() if origin is not None else None
    if cfg.weights is not None:
        weights_origin = {"model": cfg.model, "source": "file", "location": str(cfg.weights),
                          "licence": "that of the file", "dataset": "that of the file"}
    if cfg.weights is not None and fresh:
        if two_level:
            raise UserError("--weights FILE with two-level labels is not supported yet; use --pretrained")
        message, file_pre = apply_weights_file(model, cfg.weights, classes)
        if file_pre:
            pre.mean, pre.std = tuple(file_pre["mean"]), tuple(file_pre["std"])
        say(message)
    return weights_origin
