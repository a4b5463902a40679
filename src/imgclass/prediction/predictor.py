"""A Predictor rebuilds model and preprocessing from the model file alone, so every
caller (predict, submit, evaluate, serving, export) decodes and resizes images the
same way training did."""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from ..data.decode import ImageDecodeError
from ..data.find import is_image_file, list_images, natural_key
from ..data.preprocess import Preprocessing, to_nchw
from ..errors import UserError
from ..modelfile import load_model
from ..models.hierarchy import coarse_probabilities
from ..models.inference import predict_logits, probabilities
from ..models.pretrained import timm_pretrained

Source = str | Path | bytes | Image.Image


def summary_rows(results: list[dict[str, Any]]) -> list[tuple[str, str | None, float | None, str]]:
    """(image, best label or None for an error, its probability, the rest of the top-k or the error): the
    rows of the CLI's table and of the notebook's."""
    rows = []
    for r in results:
        if "error" in r:
            rows.append((r["image"], None, None, r["error"]))
        else:
            best = r["top_k"][0]
            rest = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top_k"][1:])
            rows.append((r["image"], best["label"], best["probability"], rest))
    return rows


class Predictions(list):
    """What predict returns: a list of {"image", "top_k"} (or {"image", "error"}) dicts, shown in a notebook
    as a table."""

    def _repr_html_(self) -> str:
        from ..notebook import table
        rows = [(image, "error" if label is None else label, p, rest) for image, label, p, rest in summary_rows(self)]
        return table(["image", "prediction", "probability", "next"], rows)


class Predictor:
    def __init__(self, model: torch.nn.Module, header: dict[str, Any], device: torch.device,
                 max_pixels: int | None = None):
        """max_pixels: this command's limit on an image's pixels (default decode.DEFAULT_MAX_PIXELS);
        the model file's own value can only lower it."""
        self.model, self.header, self.device = model, header, device
        self.classes: list[str] = header["classes"]
        self.pre = Preprocessing.from_dict(header["preprocessing"], max_pixels)
        self.tta = header.get("inference", {}).get("tta", "none")
        self.temperature = float(header.get("inference", {}).get("temperature", 1.0))
        self.hierarchy = header.get("hierarchy")   # two-level labels, or None

    def coarse_proba(self, probs: np.ndarray) -> np.ndarray:
        """Coarse-class probabilities: each parent's summed fine probabilities."""
        if not self.hierarchy:
            raise UserError("this model has one level of labels (train with --hierarchy or --label-columns)")
        return coarse_probabilities(probs, self.hierarchy["parents"], len(self.hierarchy["coarse_classes"]))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", max_pixels: int | None = None) -> "Predictor":
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           ("cpu" if device == "auto" else device))
        model, header = load_model(path, dev)
        return cls(model, header, dev, max_pixels)

    @classmethod
    def pretrained(cls, name: str, device: str = "auto") -> "Predictor":
        """A published ImageNet classifier used as it is (timm:NAME), with timm's class names."""
        import timm
        from timm.data import ImageNetInfo
        source, _, arch = name.partition(":")
        if source != "timm":
            raise UserError("predict --pretrained takes a timm model name, e.g. timm:xception41")
        model = timm_pretrained(arch, name)
        cfg = timm.get_pretrained_cfg(arch)
        info = ImageNetInfo()
        classes = [info.index_to_description(i) for i in range(model.num_classes)]
        header = {"classes": classes, "preprocessing": {"img_size": int(cfg.input_size[-1]), "resize": "crop",
                                                         "mean": list(cfg.mean), "std": list(cfg.std)},
                  "arch": {"name": name, "args": {}}, "inference": {"tta": "none"}}
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           ("cpu" if device == "auto" else device))
        return cls(model.to(dev).eval(), header, dev)

    @torch.no_grad()
    def probabilities(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a uint8 NCHW batch already at the model's size."""
        logits = predict_logits(self.model, batch_uint8, self.pre, len(batch_uint8) or 1, self.device, self.tta)
        return probabilities(logits, self.temperature)

    def predict_proba(self, sources: Iterable[Source], batch_size: int = 64
                      ) -> tuple[np.ndarray, list[str | None]]:
        """Probabilities (N x classes; NaN rows for unreadable inputs) and one error (or None) per input."""
        sources = list(sources)
        probs = np.full((len(sources), len(self.classes)), np.nan, dtype=np.float32)
        errors: list[str | None] = [None] * len(sources)
        for start in range(0, len(sources), batch_size):
            arrays, index = [], []
            for i in range(start, min(start + batch_size, len(sources))):
                try:
                    arrays.append(self.pre.load(sources[i]))
                    index.append(i)
                except ImageDecodeError as exc:
                    errors[i] = str(exc)
                except Exception as exc:  # noqa: BLE001 - one odd input never stops the batch
                    errors[i] = f"cannot decode: {type(exc).__name__}: {exc}"
            if arrays:
                probs[index] = self.probabilities(to_nchw(np.stack(arrays))).numpy()
        return probs, errors

    def predict(self, sources: Iterable[Source], top_k: int = 3, batch_size: int = 64,
                level: str = "fine") -> list[dict[str, Any]]:
        """[{"image": name, "top_k": [{"label", "probability"}, ...]}] or {"image", "error"} per input.

        level (two-level labels): "fine", "coarse" (top_k over coarse classes), or "both" (top_k fine
        plus "coarse_top_k")."""
        if level not in ("fine", "coarse", "both"):
            raise UserError("--level must be fine, coarse or both")
        sources = list(sources)
        probs, errors = self.predict_proba(sources, batch_size)
        coarse = self.coarse_proba(np.nan_to_num(probs)) if level != "fine" else None

        def top(row: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
            order = np.argsort(-row, kind="stable")[:max(1, min(top_k, len(names)))]
            return [{"label": names[j], "probability": float(row[j])} for j in order]

        out = Predictions()
        for i, src in enumerate(sources):
            name = str(src) if isinstance(src, (str, Path)) else f"<image {i}>"
            if errors[i] is not None:
                out.append({"image": name, "error": errors[i]})
            elif level == "coarse":
                out.append({"image": name, "top_k": top(coarse[i], self.hierarchy["coarse_classes"])})
            elif level == "both":
                out.append({"image": name, "top_k": top(probs[i], self.classes),
                            "coarse_top_k": top(coarse[i], self.hierarchy["coarse_classes"])})
            else:
                out.append({"image": name, "top_k": top(probs[i], self.classes)})
        return out


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files, folders (recursive, images only) and glob patterns -> a list of paths, in natural order."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            paths += list_images(p)
        elif p.exists():
            paths.append(p)  # an explicit file is tried even if its extension is odd
        else:
            matches = sorted(glob.glob(str(item), recursive=True), key=natural_key)
            if not matches:
                raise UserError(f"no such file, folder or pattern: {item}")
            paths += [Path(m) for m in matches if Path(m).is_file() and (is_image_file(Path(m)) or "*" not in str(item))]
    if not paths:
        raise UserError("no images to predict in " + ", ".join(map(str, inputs)))
    return paths
