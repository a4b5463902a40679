"""`imgclass augment-preview DATA`: what training's augmentation does to a few training images, as a grid
(first row: the images as decoded; then one row per draw). It uses the same plan, decode and BatchAugment
as train, so the preview is what the network sees (before normalisation)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.augment import from_config as augment_from_config
from ..data.images import load_split
from ..data.preprocess import Preprocessing
from ..core.errors import DataError, UserError
from ..core.figures import save_figure
from .plan import plan_run


def augment_preview(data: str | Path, out: str | Path = "augment_preview.png", images: int = 8, draws: int = 4,
                    config: str | Path | None = None, **options: Any) -> Path:
    if not 1 <= images <= 64 or not 1 <= draws <= 16:
        raise UserError("augment-preview shows 1 to 64 images and 1 to 16 draws")
    plan = plan_run(data, config, **options)
    cfg = plan.cfg
    rows = plan.split.items["train"]
    picked = [rows[int(i)] for i in torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed))[:images]]
    pre = Preprocessing(img_size=plan.phases[0][0], resize=cfg.resize, max_pixels=cfg.max_image_pixels)
    decoded = load_split(plan.split.root, picked, pre)
    if len(decoded) == 0:
        raise DataError("none of the picked training images could be decoded")
    augment = augment_from_config(cfg)
    x = decoded.images.float().div(255.0)
    names = [plan.classes[int(label)] for label in decoded.labels]
    grid = [("decoded", _hwc(x), names)]
    parity = torch.zeros(len(x), dtype=torch.long)
    for k in range(draws):  # epoch k: an alternating flip shows both sides over two draws
        y = augment(x.clone(), torch.Generator().manual_seed(cfg.seed * 100_003 + k), parity, k)
        grid.append((f"draw {k + 1}", _hwc(y), [""] * len(y)))
    from ..evaluation.plots import gallery_rows
    settings = ", ".join(f"{k} {v}" for k, v in augment.p.items() if v) or "nothing"
    figure = gallery_rows(grid, f"augment {cfg.augment}: {settings}", len(x))
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(figure, out, dpi=100)


def _hwc(batch: torch.Tensor) -> list:
    return [img.permute(1, 2, 0).clamp(0, 1).numpy() for img in batch]
