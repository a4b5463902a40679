"""Transfer learning: published weights (from the hub cache, or downloaded when a network is
there), local weight files, the backbone's own preprocessing, and staged fine-tuning
(a head trained on cached backbone features, then gradual unfreezing from the top with
lower learning rates for earlier layers).

Weight files are read without executing pickled code: safetensors, or torch.load with
weights_only=True for .pth/.bin files.
"""
from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError

HEAD_KEYS = ("fc.", "classifier.", "head.", "heads.", "last_linear.")


def _online(host: str, timeout: float = 3.0) -> bool:
    """A quick look for a network route to host (this machine may have none: fail in seconds, not minutes)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_error(name: str, weights: str, cache: str) -> UserError:
    return UserError(f"pretrained weights for {name} ({weights}) are not available: no network and no cached copy "
                     f"in {cache}. Ways out: --weights FILE (a .safetensors/.pth state dict or an imgclass model "
                     f"file), or fill that cache on a machine with network and copy it here (HF_HOME / TORCH_HOME)")


def timm_pretrained_file(arch: str) -> str | None:
    """Path of the cached published weights of a timm model, or None."""
    import timm
    from huggingface_hub import try_to_load_from_cache
    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(path, str):
            return path
    return None


def timm_pretrained(arch: str, name: str, **kwargs) -> nn.Module:
    """A timm model with its published weights: from the hub cache, or downloaded when there is a
    network; with neither, a one-line error naming the weights and the ways out."""
    import timm
    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None:
        raise UserError(f"timm publishes no pretrained weights for '{arch}'")
    cached = timm_pretrained_file(arch)
    if cached is None and not _online("huggingface.co"):
        from huggingface_hub.constants import HF_HUB_CACHE
        raise _offline_error(name, f"hf-hub:{cfg.hf_hub_id}", HF_HUB_CACHE)
    return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": cached} if cached else None,
                             **kwargs)


def pretrained_backbone_state(name: str) -> dict[str, torch.Tensor]:
    """The published weights of a zoo model (torchvision:NAME or timm:NAME), as a state dict."""
    source, _, arch = name.partition(":")
    if source == "timm":
        return timm_pretrained(arch, name, num_classes=0).state_dict()
    if source == "torchvision":
        import torchvision
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if file.is_file():
            return torch.load(file, map_location="cpu", weights_only=True)
        if not _online("download.pytorch.org"):
            raise _offline_error(name, weights.url, str(file.parent))
        return weights.get_state_dict(progress=False)
    raise UserError(f"--pretrained needs a zoo model (torchvision:NAME or timm:NAME), not '{name}'")


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


def read_weights_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(tensors, imgclass header or None) from .safetensors, or .pth/.pt/.bin read with weights_only."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        from ..modelfile import META_KEY
        from safetensors import safe_open
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
        import json
        return load_file(str(p)), (json.loads(meta[META_KEY]) if META_KEY in meta else None)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickled code is refused here, by design
        raise UserError(f"cannot read {p} as a weights-only checkpoint ({str(exc).splitlines()[0]}); "
                        f"convert it to .safetensors") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{p} does not hold a state dict of tensors")
    return state, None


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


def apply_weights_file(model: nn.Module, path: str | Path, classes: list[str]) -> tuple[str, dict | None]:
    """Load --weights FILE into model; returns (a message, the file's preprocessing if it is an imgclass model)."""
    tensors, header = read_weights_file(path)
    if header is None:
        n = load_backbone_state(model, tensors, str(path))
        return f"loaded {n} backbone tensors from {path}", None
    n = load_backbone_state(model, {k: v for k, v in tensors.items() if k.startswith("backbone.")}, str(path))
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    same = header.get("classes") == list(classes) and all(
        k in model.head.state_dict() and model.head.state_dict()[k].shape == v.shape for k, v in head.items())
    if same and head:
        model.head.load_state_dict(head)
        return f"loaded {n} backbone tensors and the head from imgclass model {path}", header.get("preprocessing")
    return (f"loaded {n} backbone tensors from imgclass model {path}; its head ({len(header.get('classes', []))} "
            f"classes) was dropped for a new one"), header.get("preprocessing")


# --- staged fine-tuning -----------------------------------------------------------------

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


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


@torch.no_grad()
def compute_features(model: nn.Module, images: torch.Tensor, pre, batch_size: int, device: torch.device) -> torch.Tensor:
    """Backbone features of every image, once (the frozen backbone in eval mode)."""
    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        x = pre.normalize(images[s:s + batch_size].to(device))
        out.append(model.features(x).float().cpu())
    return torch.cat(out)


def train_head(model: nn.Module, feats: torch.Tensor, labels: torch.Tensor, val_feats: torch.Tensor | None,
               val_labels: torch.Tensor | None, epochs: int, lr: float, weight_decay: float, label_smoothing: float,
               batch_size: int, seed: int, device: torch.device, log=None) -> list[dict]:
    """Stage 1: only the head learns, from cached features (no augmentation: each image's
    features are computed once, unaugmented). Each epoch costs a few matrix products."""
    import time
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW(head_params, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(feats) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(feats), generator=gen)
        total, correct, seen = 0.0, 0, 0
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            logits = model.forward_head(feats[idx].to(device))
            y = labels[idx].to(device)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
        row = {"epoch": f"head {epoch + 1}", "train_loss": total / seen, "train_acc": correct / seen,
               "val_loss": float("nan"), "val_acc": float("nan"), "lr": opt.param_groups[0]["lr"]}
        if val_feats is not None and len(val_feats):
            model.eval()
            with torch.no_grad():
                vl = model.forward_head(val_feats.to(device)).cpu()
            row["val_loss"] = float(F.cross_entropy(vl, val_labels))
            row["val_acc"] = float((vl.argmax(1) == val_labels).float().mean())
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        if log:
            log(row)
    return history


def layerwise_optimizer(model: nn.Module, groups: list[nn.Module], name: str, lr: float, weight_decay: float,
                        momentum: float, decay: float) -> torch.optim.Optimizer:
    """Head at lr; backbone group k from the top at lr * decay**(k+1) (earlier layers learn slower)."""
    param_groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("backbone.")],
                     "weight_decay": weight_decay, "lr_scale": 1.0}]
    seen = set()
    for k, g in enumerate(reversed(groups)):
        params = [p for p in g.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        param_groups.append({"params": params, "weight_decay": weight_decay, "lr_scale": decay ** (k + 1)})
    rest = [p for p in model.backbone.parameters() if id(p) not in seen]
    if rest:
        param_groups.append({"params": rest, "weight_decay": weight_decay, "lr_scale": decay ** (len(groups) + 1)})
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=True)
    return torch.optim.AdamW(param_groups, lr=lr)


class GradualUnfreeze:
    """Stage 2 callback: in epoch e of E, the top ceil(G * (e+1) / E) of G backbone groups learn;
    the rest stay frozen, their batch norms in inference mode (as in the Keras course recipe).
    Derived from the epoch alone, so --resume restores it exactly."""
    order = -1

    def __init__(self, groups: list[nn.Module]):
        self.groups = groups

    def trainable_count(self, epoch: int, epochs: int) -> int:
        return min(len(self.groups), math.ceil(len(self.groups) * (epoch + 1) / max(1, epochs)))

    def __call__(self, event: str, trainer) -> None:
        if event != "before_epoch":
            return
        k = self.trainable_count(trainer.epoch, trainer.epochs)
        for i, g in enumerate(self.groups):
            trainable = i >= len(self.groups) - k
            set_trainable(g, trainable)
            if not trainable:
                g.eval()
