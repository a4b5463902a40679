"""Transfer learning: published weights (models/pretrained.py: installed weight packages, the hub
cache, or a download when a network is there), local weight files, the backbone's own preprocessing,
and staged fine-tuning (a head trained on cached backbone features, then gradual unfreezing from the
top with lower learning rates for earlier layers).

Weight files are read without executing pickled code: safetensors, or torch.load with
weights_only=True for .pth/.bin files.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ...core.errors import UserError
from ...data.preprocess import Preprocessing
from ...models.modelfile import META_KEY, resolve_model_path
from ...models.header import ModelHeader
from ...models.tasks import Task
from ...models.pretrained import read_checkpoint
from ..loop.fit import Callback
from ..loop.optim import optimizer_for


def backbone_preprocessing(name: str) -> dict[str, Any] | None:
    """Input size and mean/std the published weights were trained with (timm's pretrained_cfg,
    torchvision's weights transforms)."""
    source, _, arch = name.partition(":")
    if source == "timm":
        import timm
        cfg = timm.get_pretrained_cfg(arch)
        if cfg is not None:
            return {"img_size": int(cfg.input_size[-1]), "mean": tuple(cfg.mean), "std": tuple(cfg.std)}
    if source == "torchvision":
        import torchvision
        tf = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
        return {"img_size": int(tf.crop_size[0]), "mean": tuple(tf.mean), "std": tuple(tf.std)}
    return None


def _weights_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():  # a run folder: its model file
        p = resolve_model_path(p)
    if not p.is_file():
        raise UserError(f"weights file not found: {p}")
    return p


def weights_file_header(path: str | Path) -> ModelHeader | None:
    """The imgclass header of a --weights file (checked), or None for weights without one."""
    p = _weights_path(path)
    if p.suffix != ".safetensors":
        return None
    from safetensors import safe_open
    with safe_open(str(p), framework="pt") as fh:
        meta = fh.metadata() or {}
    return ModelHeader.from_json(meta[META_KEY], p) if META_KEY in meta else None


def read_weights_file(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelHeader | None]:
    """(tensors, imgclass header or None) from .safetensors, or .pth/.pt/.bin read with weights_only."""
    p = _weights_path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(p)), weights_file_header(p)
    return read_checkpoint(p), None


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Load a backbone's own state dict (classifier keys ignored). Every backbone tensor must be
    there with the right shape: a silent partial load would be worse than an error."""
    target = model.backbone.state_dict()
    state = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in state.items()}
    missing = [k for k in target if k not in state]
    wrong = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or wrong:
        sample = ", ".join((missing + wrong)[:3])
        raise UserError(f"weights in {source} do not fit this architecture: {len(missing)} missing and "
                        f"{len(wrong)} mis-shaped tensors (e.g. {sample})")
    model.backbone.load_state_dict({k: state[k] for k in target}, strict=True)
    return len(target)


def apply_weights_file(model: nn.Module, path: str | Path, classes: list[str]) -> tuple[str, Preprocessing | None]:
    """Load --weights FILE into model; returns (a message, the file's preprocessing if it is an imgclass model)."""
    tensors, header = read_weights_file(path)
    if header is None:
        n = load_backbone_state(model, tensors, str(path))
        return f"loaded {n} backbone tensors from {path}", None
    n = load_backbone_state(model, {k: v for k, v in tensors.items() if k.startswith("backbone.")}, str(path))
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    same = list(header.classes) == list(classes) and all(
        k in model.head.state_dict() and model.head.state_dict()[k].shape == v.shape for k, v in head.items())
    if same and head:
        model.head.load_state_dict(head)
        return f"loaded {n} backbone tensors and the head from imgclass model {path}", header.preprocessing
    return (f"loaded {n} backbone tensors from imgclass model {path}; its head ({len(header.classes)} "
            f"classes) was dropped for a new one"), header.preprocessing


# --- staged fine-tuning -----------------------------------------------------------------

def classifiers(model: nn.Module) -> list[nn.Module]:
    """The parts of a model that carry a pretrained backbone: the model itself, or for two-level
    labels its fine model (flat, multi-head) and coarse model (two-stage). Empty: no backbone."""
    if hasattr(model, "backbone"):
        return [model]
    parts = [getattr(model, "fine", None), getattr(model, "coarse", None)]
    return [m for m in parts if m is not None and hasattr(m, "backbone")]


def is_backbone_param(name: str) -> bool:
    return name.startswith("backbone.") or ".backbone." in name


def load_pretrained(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """The same backbone weights into every backbone of the model; returns the tensors loaded per backbone."""
    return [load_backbone_state(c, state, source) for c in classifiers(model)][0]


def backbone_groups(backbone: nn.Module) -> list[nn.Module]:
    """The backbone cut into consecutive groups, input side first, for gradual unfreezing:
    its top-level children, with sequences of blocks (ResNet stages, ViT blocks) split into blocks."""
    groups = []
    for child in backbone.children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            groups += [c for c in child if any(True for _ in c.parameters())]
        elif any(True for _ in child.parameters()):
            groups.append(child)
    return groups


def model_groups(model: nn.Module) -> list[nn.Module]:
    """Unfreezing groups across every backbone of the model: group i of each backbone together
    (two-stage labels have two backbones of the same architecture)."""
    per = [backbone_groups(c.backbone) for c in classifiers(model)]
    if len(per) == 1:
        return per[0]
    return [nn.ModuleList(list(g)) for g in zip(*per)]


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def set_backbones_trainable(model: nn.Module, trainable: bool) -> None:
    for c in classifiers(model):
        set_trainable(c.backbone, trainable)


def train_head(task: Task, model: nn.Module, feats: torch.Tensor, labels: torch.Tensor, val_feats: torch.Tensor | None,
               val_labels: torch.Tensor | None, epochs: int, lr: float, weight_decay: float, label_smoothing: float,
               batch_size: int, seed: int, device: torch.device, log=None) -> list[dict]:
    """Stage 1: only the head learns, from cached features (no augmentation: each image's
    features are computed once, unaugmented). Each epoch costs a few matrix products."""
    import time
    head_params = [p for n, p in model.named_parameters() if not is_backbone_param(n)]
    opt = torch.optim.AdamW(head_params, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(feats) / batch_size)
    if steps >= 4:  # warm-up over >= 2 steps: OneCycleLR divides by zero on a warm-up under one step
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                    pct_start=min(0.5, max(0.1, 2 / steps)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(feats), generator=gen)
        total, correct, seen = 0.0, 0, 0
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            y = labels[idx].to(device)
            loss, scores = task.head_loss(model, feats[idx].to(device), y, label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            correct += task.correct(scores, y)
            seen += len(idx)
        row = {"epoch": f"head {epoch + 1}", "train_loss": total / seen, "train_acc": correct / seen,
               "val_loss": float("nan"), "val_acc": float("nan"), "lr": opt.param_groups[0]["lr"]}
        if val_feats is not None and len(val_feats):
            model.eval()
            with torch.no_grad():
                _, vl = task.head_loss(model, val_feats.to(device), val_labels.to(device), 0.0)
            row["val_loss"], row["val_acc"] = task.score(vl.cpu(), val_labels)
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        if log:
            log(row)
    return history


def layerwise_optimizer(model: nn.Module, groups: list[nn.Module], name: str, lr: float, weight_decay: float,
                        momentum: float, decay: float) -> torch.optim.Optimizer:
    """Head at lr; backbone group k from the top at lr * decay**(k+1) (earlier layers learn slower)."""
    param_groups = [{"params": [p for n, p in model.named_parameters() if not is_backbone_param(n)],
                     "weight_decay": weight_decay, "lr_scale": 1.0}]
    seen = set()
    for k, g in enumerate(reversed(groups)):
        params = [p for p in g.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        param_groups.append({"params": params, "weight_decay": weight_decay, "lr_scale": decay ** (k + 1)})
    rest = [p for c in classifiers(model) for p in c.backbone.parameters() if id(p) not in seen]
    if rest:
        param_groups.append({"params": rest, "weight_decay": weight_decay, "lr_scale": decay ** (len(groups) + 1)})
    return optimizer_for(name, param_groups, lr, momentum)


class GradualUnfreeze(Callback):
    """Stage 2 callback: in epoch e of E, the top ceil(G * (e+1) / E) of G backbone groups learn;
    the rest stay frozen, their batch norms in inference mode (as in the Keras course recipe).
    With mode "none" no group ever learns and every batch norm of the backbone keeps its ImageNet
    statistics (Keras' trainable=False); mode "all" unfreezes every group from the first epoch.
    With bn_stats_frozen every backbone batch norm stays in inference mode, trainable or not: its
    scale and shift learn, its statistics stay the pretrained ones (Keras' fine-tuning advice).
    Derived from the epoch alone, so --resume restores it exactly."""
    order = -1

    def __init__(self, groups: list[nn.Module], mode: str = "gradual", bn_stats_frozen: bool = True):
        self.groups = groups
        self.mode = mode
        self.bn_stats_frozen = bn_stats_frozen

    def trainable_count(self, epoch: int, epochs: int) -> int:
        if self.mode == "none":
            return 0
        if self.mode == "all":
            return len(self.groups)
        return min(len(self.groups), math.ceil(len(self.groups) * (epoch + 1) / max(1, epochs)))

    def before_epoch(self, trainer) -> None:
        k = self.trainable_count(trainer.epoch, trainer.epochs)
        for i, g in enumerate(self.groups):
            trainable = i >= len(self.groups) - k
            set_trainable(g, trainable)
            if not trainable:
                g.eval()
        for c in classifiers(trainer.model):
            if self.mode == "none":  # parameters outside the groups (rare) are frozen too
                set_trainable(c.backbone, False)
                c.backbone.eval()
            elif self.bn_stats_frozen:
                for m in c.backbone.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
