"""A Predictor rebuilds model and preprocessing from the model file alone, so every
caller (predict, submit, evaluate, serving, export) decodes and resizes images the
same way training did."""
from __future__ import annotations

import csv
import glob
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from ..data.decode import ImageDecodeError
from ..data.find import is_image_file, list_images, natural_key
from ..data.preprocess import to_nchw
from ..core.errors import UserError
from ..core.spreadsheet import safe_row
from ..models.modelfile import (INT8_KEY, export_metadata, ir_path, is_openvino_export, load_model, read_ir_header,
                                read_onnx_header, resolve_model_path)
from ..models.header import Architecture, ModelHeader
from ..models.inference import compute_features, pick_device
from ..models.pretrained import imagenet_preprocessing, timm_pretrained
from ..models.reject import UNKNOWN, Rejection, max_probability_rule
from ..models.tasks import DEFAULT_TOP_K, SINGLE_LABEL, Task
from .engines import Engine, OnnxEngine, OpenVinoEngine, TorchEngine

Source = str | Path | bytes | Image.Image


class Predictions(list):
    """What predict returns: a list of {"image", and the task's answer: "top_k" ...} (or {"image", "error"}) dicts,
    and the task that answered them (models/tasks), which says how an answer reads in a table; shown in a notebook
    as a table."""

    def __init__(self, answers=(), task: Task = SINGLE_LABEL):
        super().__init__(answers)
        self.task = task

    def summary_rows(self) -> list[tuple[str, str | None, float | None, str]]:
        """(image, what the answer says or None for an error, its probability or number, the rest of the answer or
        the error): the rows of the CLI's table and of the notebook's. A rejected answer (--reject) says 'unknown'
        and its score; the nearest classes follow."""
        rows = []
        for r in self:
            if "error" in r:
                rows.append((r["image"], None, None, r["error"]))
                continue
            said, number, rest = self.task.summary_row(r)
            if r.get("unknown"):
                said, number, rest = UNKNOWN, r["score"], ", ".join(
                    f"{t['label']} {t['probability']:.3f}" for t in r["top_k"])
            rows.append((r["image"], said, number, rest))
        return rows

    def csv_text(self) -> str:
        """predict --format csv: image, unknown and score with --reject, the task's columns (tags given, ranked
        labels; or the number), error."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        columns, cells = self.task.csv_columns(self)
        rejecting = any("unknown" in r for r in self)
        writer.writerow(["image"] + (["unknown", "score"] if rejecting else []) + columns + ["error"])
        for r in self:
            rejected = ([str(r["unknown"]).lower(), f"{r['score']:.6f}"] if "unknown" in r else ["", ""]) \
                if rejecting else []
            own = cells(r) if "error" not in r else [""] * len(columns)
            writer.writerow(safe_row([r["image"]] + rejected + own + [r.get("error", "")]))
        return buf.getvalue()

    def _repr_html_(self) -> str:
        from ..core.notebook import table
        rows = [(image, "error" if label is None else label, p, rest) for image, label, p, rest in self.summary_rows()]
        return table(["image", "prediction", "probability", "next"], rows)


DECODE_WORKERS = max(1, min(4, os.cpu_count() or 1))  # threads decoding a batch (Pillow releases the GIL)
SHARD_CHUNK = 256  # images read from shards and scored at a time: their bytes alone are held (a few MB)


def overlap_decoding(device: torch.device) -> bool:
    """Whether the next batch is decoded while the model scores this one: only with cores to spare (a GPU
    runs the model, or the CPU has more cores than the model's threads). When the model's threads already
    fill every core, decoding beside it stalls the model's parallel operators. Measured on machine A (2 cores,
    Lite0 224 px in ONNX Runtime, 1,000 JPEGs of 640 x 480; the model alone 186 images/s): overlapped 115
    images/s, decoded in parallel between model calls 150+."""
    return device.type == "cuda" or (os.cpu_count() or 1) > torch.get_num_threads()


class Predictor:
    def __init__(self, model: torch.nn.Module | None, header: ModelHeader, device: torch.device,
                 max_pixels: int | None = None, engine: Engine | None = None):
        """max_pixels: this command's limit on an image's pixels (default decode.DEFAULT_MAX_PIXELS);
        the model file's own value can only lower it. engine: what scores images (default: the model in
        eager PyTorch; `use` puts another to work, e.g. prediction.runtime.choose_runtime's); model is None for
        an .onnx file."""
        self.model, self.header, self.device = model, header, device
        self.classes: list[str] = list(header.classes)
        self.pre = header.preprocessing.within(max_pixels)
        self.tta = header.tta
        self.temperature = float(header.temperature)
        self.task = header.task             # the label structure: its answers (views)
        self.engine: Engine = engine or self.torch_engine()
        self.runtime_note = f"runtime: {self.engine.runtime} {self.engine.precision}"  # what chose it, and why
        self.path: Path | None = None  # the model file it was loaded from (prediction.runtime exports that)

    @property
    def exported_as(self) -> str | None:
        """'ONNX' or 'OpenVINO' for an exported file (no PyTorch model: no heatmaps, no embeddings), else None."""
        return None if self.model is not None else {"onnx": "ONNX", "openvino": "OpenVINO"}[self.engine.runtime]

    def use(self, choice) -> None:
        """Score with the engine of a runtime choice (prediction.runtime.RuntimeChoice), stating why."""
        self.engine, self.runtime_note = choice.engine, choice.note

    def limit_pixels(self, max_pixels: int) -> None:
        """Lower the pixel limit of the images this predictor decodes (a service's own limit)."""
        self.pre = self.pre.within(max_pixels)

    def torch_engine(self, bf16: bool | None = None) -> TorchEngine:
        """This model in eager PyTorch (bf16 autocast if asked; None: on CUDA only)."""
        return TorchEngine(self.model, self.pre, self.tta, self.temperature, self.device, bf16, self.task)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", max_pixels: int | None = None) -> "Predictor":
        dev = pick_device(device)
        if is_openvino_export(path):  # an OpenVINO export (its folder or model.xml): OpenVINO, no PyTorch model
            file = ir_path(path)
            header = read_ir_header(file)
            predictor = cls(None, header, torch.device("cpu"), max_pixels,
                            OpenVinoEngine(file, header.img_size, _precision_of(file)))
            predictor.path = file
            return predictor
        file = Path(path) if Path(path).suffix == ".onnx" else resolve_model_path(path)
        if file.suffix == ".onnx":  # an exported graph: ONNX Runtime, no PyTorch model (no heatmaps)
            header = read_onnx_header(file)
            predictor = cls(None, header, torch.device("cpu"), max_pixels,
                            OnnxEngine(file, header.img_size, precision=_precision_of(file)))
        else:
            model, header = load_model(file, dev)
            predictor = cls(model, header, dev, max_pixels)
        predictor.path = file
        return predictor

    @classmethod
    def pretrained(cls, name: str, device: str = "auto") -> "Predictor":
        """A published ImageNet classifier used as it is (timm:NAME), with timm's class names."""
        from timm.data import ImageNetInfo
        source, _, arch = name.partition(":")
        if source != "timm":
            raise UserError("predict --pretrained takes a timm model name, e.g. timm:xception41")
        model = timm_pretrained(arch, name)
        info = ImageNetInfo()
        classes = [info.index_to_description(i) for i in range(model.num_classes)]
        header = ModelHeader(arch=Architecture(name), classes=tuple(classes), preprocessing=imagenet_preprocessing(arch))
        dev = pick_device(device)
        return cls(model.to(dev).eval(), header, dev)

    def probabilities(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a uint8 NCHW batch already at the model's size (no autograd: predict_logits
        runs under no_grad, ONNX Runtime has none)."""
        return self.engine(batch_uint8)

    def decode(self, source: Source) -> np.ndarray | str:
        """One input at the model's size (H x W x 3 uint8), or why it cannot be read."""
        try:
            return self.pre.load(source)
        except ImageDecodeError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - one odd input never stops the batch
            return f"cannot decode: {type(exc).__name__}: {exc}"

    def predict_proba(self, sources: Iterable[Source], batch_size: int = 64, features: list | None = None
                      ) -> tuple[np.ndarray, list[str | None]]:
        """Probabilities (N x classes; NaN rows for unreadable inputs) and one error (or None) per input.
        Each batch is decoded by DECODE_WORKERS threads, while the model scores the previous one when there
        are cores to spare (overlap_decoding). features: a list that receives the embeddings (N x D, NaN rows for
        unreadable inputs) as its one item."""
        sources = list(sources)
        probs = np.full((len(sources), len(self.classes)), np.nan, dtype=np.float32)
        feats = None
        errors: list[str | None] = [None] * len(sources)
        starts = list(range(0, len(sources), batch_size))
        overlap = overlap_decoding(self.device)
        with ThreadPoolExecutor(DECODE_WORKERS) as pool:
            def submit(start: int) -> list:
                return [pool.submit(self.decode, sources[i]) for i in range(start, min(start + batch_size, len(sources)))]
            pending = None
            for n, start in enumerate(starts):
                current = pending if pending is not None else submit(start)
                pending = submit(starts[n + 1]) if overlap and n + 1 < len(starts) else None
                arrays, index = [], []
                for i, future in enumerate(current, start):
                    decoded = future.result()
                    if isinstance(decoded, str):
                        errors[i] = decoded
                    else:
                        arrays.append(decoded)
                        index.append(i)
                if arrays and features is None:
                    probs[index] = self.probabilities(to_nchw(np.stack(arrays))).numpy()
                elif arrays:
                    batch_probs, batch_feats = self.scores_and_features(to_nchw(np.stack(arrays)))
                    probs[index] = batch_probs.numpy()
                    if feats is None:
                        feats = np.full((len(sources), batch_feats.shape[1]), np.nan, dtype=np.float32)
                    feats[index] = batch_feats.numpy()
        if features is not None:
            features.append(feats if feats is not None else np.full((len(sources), 0), np.nan, dtype=np.float32))
        return probs, errors

    def rejection(self, reject: bool | float | None) -> Rejection | None:
        """The "none of these" rule a command asked for: True the model file's, a number the model file's score at
        that threshold (the maximum probability for a file without a rule), False or None none. Refused for several
        tags per image, and for a k-NN rule without the model (an ONNX file holds no training embeddings)."""
        if reject is None or reject is False:
            return None
        self.task.require("reject")
        rule = self.header.reject
        if reject is True and rule is None:
            raise UserError("this model file has no rejection rule (it was trained without a validation split or by "
                            "an older imgclass): train again, or give --reject-threshold P (on the highest probability)")
        if rule is None:
            return max_probability_rule(float(reject))
        if rule.needs_features and (self.model is None or rule.bank is None):
            raise UserError("--reject needs the model file (model.safetensors: the training images' embeddings and "
                            "the backbone that computes an image's), not "
                            + (f"an {self.exported_as} export" if self.model is None else "a file without them"))
        return rule if reject is True else rule.at(float(reject))

    def features(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """The pooled features (embeddings) of a uint8 NCHW batch, in PyTorch whatever the engine."""
        return compute_features(self.model, batch_uint8, self.pre, max(1, len(batch_uint8)), self.device)

    def scores_and_features(self, batch_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, features) of a batch: from one pass in eager PyTorch; another engine's probabilities and
        a PyTorch pass for the features."""
        if isinstance(self.engine, TorchEngine):
            feats: list[torch.Tensor] = []
            return self.engine(batch_uint8, features=feats), torch.cat(feats)
        return self.probabilities(batch_uint8), self.features(batch_uint8)

    def predict(self, sources: Iterable[Source], top_k: int | None = None, batch_size: int = 64,
                level: str = "fine", reject: bool | float | None = None) -> list[dict[str, Any]]:
        """[{"image": name, "top_k": [{"label", "probability"}, ...]}] or {"image", "error"} per input.

        level: the task's answer (models/task.py answers): "fine" (the model's classes); with two-level labels
        also "coarse" (top_k over coarse classes), or "both" (top_k fine plus "coarse_top_k"). With several
        tags per image each answer also has "labels": the tags given at their thresholds. reject (True, or a
        threshold): each answer also has "unknown" (its score is below the threshold: none of the classes) and
        "score" (models/reject.py)."""
        top_k, rejection = self.check_request(top_k, level, reject)
        sources = list(sources)
        feats: list[np.ndarray] | None = [] if rejection is not None and rejection.needs_features else None
        probs, errors = self.predict_proba(sources, batch_size, feats)
        names = [str(src) if isinstance(src, (str, Path)) else f"<image {i}>" for i, src in enumerate(sources)]
        return self.answer(names, probs, errors, top_k, level, rejection, feats[0] if feats else None)

    def predict_shards(self, shards: list[str], top_k: int | None = None, level: str = "fine",
                       reject: bool | float | None = None, chunk: int = SHARD_CHUNK) -> "Predictions":
        """predict's answers for the images in WebDataset-style .tar shards (data/shards.py), read as a stream in
        order, `chunk` images' bytes held at a time; each named tar://MEMBER::SHARD."""
        from ..data.shards import shard_batches
        top_k, rejection = self.check_request(top_k, level, reject)
        out = Predictions(task=self.task)
        for names, items in shard_batches(shards, chunk):
            feats: list[np.ndarray] | None = [] if rejection is not None and rejection.needs_features else None
            probs, errors = self.predict_read(items, feats)
            out.extend(self.answer(names, probs, errors, top_k, level, rejection, feats[0] if feats else None))
            del items  # this chunk's bytes go before the next is read: one chunk held at a time
        return out

    def predict_read(self, items: list[bytes | str], features: list | None = None, batch_size: int = 64
                     ) -> tuple[np.ndarray, list[str | None]]:
        """predict_proba for images already read: each item its bytes, or why it could not be read (a str, which
        becomes its error; a shard's member that was too large, say)."""
        readable = [i for i, item in enumerate(items) if isinstance(item, bytes)]
        errors: list[str | None] = [None if isinstance(item, bytes) else item for item in items]
        feats: list[np.ndarray] | None = [] if features is not None else None
        scored, scored_errors = self.predict_proba([items[i] for i in readable], batch_size, feats)
        probs = np.full((len(items), len(self.classes)), np.nan, dtype=np.float32)
        probs[readable] = scored
        for i, error in zip(readable, scored_errors):
            errors[i] = error
        if features is not None:
            all_feats = np.full((len(items), feats[0].shape[1]), np.nan, dtype=np.float32)
            all_feats[readable] = feats[0]
            features.append(all_feats)
        return probs, errors

    def check_level(self, level: str) -> None:
        """A level this model's task does not answer is refused at once, before any image is read."""
        self.task.views(np.zeros((0, len(self.classes)), np.float32), self.classes, level)

    def check_request(self, top_k: int | None, level: str, reject: bool | float | None
                      ) -> tuple[int, Rejection | None]:
        """What a prediction asks, checked before any work: (top_k, None: the default; the rejection rule asked
        for), or a UserError naming the first the model's task cannot do, the level first."""
        self.check_level(level)
        return self.task.check_top_k(top_k), self.rejection(reject)

    def needs_features(self, reject: bool | float | None) -> bool:
        """Whether the rejection rule asked for scores images by their embeddings (a k-NN rule)."""
        rejection = self.rejection(reject)
        return rejection is not None and rejection.needs_features

    def answer(self, names: list[str], probs: np.ndarray, errors: list[str | None], top_k: int = DEFAULT_TOP_K,
               level: str = "fine", rejection: Rejection | None = None, features: np.ndarray | None = None
               ) -> "Predictions":
        """predict's answers from probabilities scored elsewhere (predict_proba here, or Ray's workers:
        prediction/ray_predict.py), so that both answer alike: one per name, {"image", "error"} where errors has
        one. features: the embeddings, when the rejection rule needs them."""
        answers = self.task.answers(probs, self.classes, level, top_k)
        if rejection is not None:
            answers = rejection.mark(answers, probs, features)
        return Predictions(({"image": name, "error": error} if error is not None else {"image": name, **answer}
                            for name, error, answer in zip(names, errors, answers)), self.task)


def _precision_of(export: Path) -> str:
    """int8 or float32, as an export's metadata says; an 8-bit int8 export checked on another kind of CPU says so
    in a line (its accuracy was measured there: `export --quantize int8` again here checks it on this one)."""
    report = export_metadata(export, INT8_KEY)
    if not report:
        return "float32"
    from ..core import log
    from ..models.inference import cpu_label
    facts = json.loads(report) if report.startswith("{") else {}
    checked_on = facts.get("cpu")
    if facts.get("weight_bits", 8) == 8 and checked_on and checked_on != cpu_label():  # 7 bits hold everywhere
        log.warning(f"{export}: this int8 model's accuracy was checked on {checked_on}, not on this {cpu_label()}; "
                    f"export it with --quantize int8 here to check it on this CPU")
    return "int8"


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
