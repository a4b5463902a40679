"""Why did it say that: class-activation heatmaps through the `grad-cam` library (pytorch_grad_cam).

Grad-CAM weighs the last spatial feature map by the gradient of the chosen class's score; EigenCAM
(gradient-free) takes the map's first principal component. The target layer is found from the model's
structure, not configured: the last module, in execution order, whose output is still a spatial map
(N x C x H x W with H, W > 1): the last convolution stage before global pooling, for fast, cnn, resnet and
every timm and torchvision backbone alike. Images go through the model file's own decode and
preprocessing (the Predictor), so a heatmap explains the very prediction `predict` makes."""
from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..core.errors import UserError
from ..core.figures import save_figure
from ..data.decode import ImageDecodeError
from ..data.preprocess import to_nchw
from ..inference.engines import TorchEngine
from ..inference.predictor import Predictor

METHODS = ("gradcam", "eigencam")


def target_layer(model: nn.Module, img_size: int) -> nn.Module:
    """The last module whose output is a spatial map larger than 1 x 1, found by one forward pass."""
    seen: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, out: seen.append(mod)
                                     if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[-2:]) > 1
                                     else None)
             for m in model.modules() if not list(m.children())]  # leaves: convolutions, norms, activations
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, img_size, img_size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise UserError("this model has no spatial feature map to explain (e.g. the mlp): no heatmap")
    return seen[-1]


def heatmaps(predictor: Predictor, images: torch.Tensor, classes: list[int], method: str = "gradcam",
             model: nn.Module | None = None) -> np.ndarray:
    """N x H x W maps in [0, 1] at the model's input size, for uint8 NCHW images and one class index each.
    Grad-CAM hooks the model while it runs: model (default the predictor's) must not run anything else
    meanwhile (the service gives each heatmap its own copy under a lock: HeatmapService)."""
    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}")
    if predictor.model is None:
        raise UserError(f"heatmaps need the PyTorch model file (this is an {predictor.exported_as} export: no "
                        "gradients)")
    from pytorch_grad_cam import EigenCAM, GradCAM  # deferred: grad-cam imports opencv
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    model = (model if model is not None else predictor.model).eval()
    layer = target_layer(model, predictor.pre.img_size)
    x = predictor.pre.normalize(images.to(predictor.device)).requires_grad_(True)
    cam_class = GradCAM if method == "gradcam" else EigenCAM
    with cam_class(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])


def explain(model: str | Path | Predictor, inputs: Any, label: str | None = None, out: str | Path = "explain",
            method: str = "gradcam", device: str = "auto") -> list[dict[str, Any]]:
    """For each image: the heatmap of the predicted class (or of `label`) over the image, written to
    out/<image name>.png (STEM-2.png for a second image of that name) with the prediction and the chosen class's
    probability; returns one dict per image."""
    from ..inference.predictor import expand_inputs
    predictor = model if isinstance(model, Predictor) else Predictor.load(model, device)
    if label is not None and label not in predictor.classes:
        raise UserError(f"--class {label!r} is not one of the model's classes: {', '.join(predictor.classes[:10])}"
                        + (" ..." if len(predictor.classes) > 10 else ""))
    paths = expand_inputs(inputs)
    out_dir = Path(out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    results, written = [], set()
    for path in paths:
        try:  # the model file's decode and resize, as predict does
            images = to_nchw(predictor.pre.load(path)[None])
        except ImageDecodeError as exc:
            results.append({"image": str(path), "error": str(exc)})
            continue
        probs = predictor.probabilities(images)[0]
        top = int(probs.argmax())
        chosen = predictor.classes.index(label) if label is not None else top
        target = _unused_name(out_dir, Path(str(path)).stem, written)
        save_figure(heatmap_figure(images[0].permute(1, 2, 0).numpy(), overlays(predictor, images, [chosen], method)[0],
                                   f"predicted {predictor.classes[top]} {float(probs[top]):.2f}; heatmap of "
                                   f"{predictor.classes[chosen]} {float(probs[chosen]):.2f} ({method})"), target)
        results.append({"image": str(path), "prediction": predictor.classes[top], "probability": float(probs[top]),
                        "explained": predictor.classes[chosen], "heatmap": str(target)})
    return results


def _unused_name(folder: Path, stem: str, written: set[str]) -> Path:
    """STEM.png, or STEM-2.png, STEM-3.png... when this call already wrote that name (two images with one stem in
    different folders each get their own overlay)."""
    name, n = f"{stem}.png", 1
    while name in written:
        n += 1
        name = f"{stem}-{n}.png"
    written.add(name)
    return folder / name


class ExplainBusy(Exception):
    """No heatmap could start within the wait (another one holds the model copy)."""


class HeatmapService:
    """The service's /explain: Grad-CAM hooks the model it runs, so a heatmap must not share its model with
    anything running at the same time (another heatmap, or the batcher's predictions under --runtime torch:
    their activations would pass through the hooks, and one user's image would shape another's heatmap).
    Heatmaps therefore run on a private float32 copy of the model, one at a time (a lock with a bounded wait:
    past it ExplainBusy, which the service answers 503)."""

    def __init__(self, predictor: Predictor, wait_seconds: float = 30.0):
        self.predictor, self.wait_seconds = predictor, wait_seconds
        self._lock = threading.Lock()
        self._model: nn.Module | None = None  # made at the first heatmap: a service that never explains pays nothing

    def png(self, image_hwc: np.ndarray, label: str | None = None) -> tuple[str, float, bytes]:
        """(the class, its probability, PNG of its heatmap over the image); the class is the top one, or `label`
        (a class, or with several tags per image a tag) by name."""
        import io
        from PIL import Image
        if label is not None and label not in self.predictor.classes:
            raise UserError(f"unknown class '{label}'")
        if not self._lock.acquire(timeout=self.wait_seconds):
            raise ExplainBusy(f"another heatmap is being drawn (waited {self.wait_seconds:g} s)")
        try:
            if self._model is None:
                self._model = copy.deepcopy(self.predictor.model).float().eval()
            images = to_nchw(image_hwc[None])
            p = self.predictor  # the probability: predict's float32 PyTorch answer, from the copy the gradients use
            probs = TorchEngine(self._model, p.pre, p.tta, p.temperature, p.device, False, p.task)(images)[0]
            top = int(probs.argmax()) if label is None else self.predictor.classes.index(label)
            cam = heatmaps(self.predictor, images, [top], model=self._model)[0]
        finally:
            self._lock.release()
        buf = io.BytesIO()
        Image.fromarray(overlay_image(images[0], cam)).save(buf, format="PNG")
        return self.predictor.classes[top], float(probs[top]), buf.getvalue()


def overlay_image(image_uint8_chw: torch.Tensor, cam: np.ndarray) -> np.ndarray:
    """The image with the heatmap blended over it (grad-cam's own colouring), H x W x 3 uint8."""
    from pytorch_grad_cam.utils.image import show_cam_on_image
    rgb = image_uint8_chw.permute(1, 2, 0).numpy().astype(np.float32) / 255.0
    return show_cam_on_image(rgb, cam, use_rgb=True)


def overlays(predictor: Predictor, images: torch.Tensor, classes: list[int], method: str = "gradcam") -> list:
    """The heatmap of each image's class blended over it (H x W x 3 uint8 each): what explain, the evaluation's
    gallery and the service's /explain show."""
    return [overlay_image(img, cam) for img, cam in zip(images, heatmaps(predictor, images, classes, method))]


def heatmap_figure(image: np.ndarray, overlay: np.ndarray, title: str):
    """explain's picture: the image (H x W x 3) beside its heatmap overlay."""
    from ..core.figures import new_figure  # deferred: matplotlib only when a picture is drawn
    fig, axes = new_figure(1, 2, figsize=(7, 3.8))
    axes[0].imshow(image)
    axes[1].imshow(overlay)
    for ax, name in zip(axes, ("image", "heatmap")):
        ax.set(title=name, xticks=[], yticks=[])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
