"""`imgclass evaluate MODEL [DATA] --split test`: predictions, metrics.json, predictions.csv,
figures and a written report (report.html, report.md) in <run>/eval/<split>/ or --out."""
from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.find import find_images
from ..data.images import load_split
from ..data.split import SPLITS, read_splits
from ..data.tags import read_tags
from .. import log
from ..errors import DataError, UserError
from ..files import write_bytes_atomic, write_text_atomic
from ..modelfile import resolve_model_path
from ..models.inference import compute_features
from ..models.neighbours import unit_rows
from ..models.task import TwoLevel
from ..prediction.predictor import Predictor
from ..rundir import RunDir
from . import plots
from .metrics import compute_metrics, expected_calibration_error, uncalibrated
from .report import RunContext, write_report

EVAL_SPLITS = ("test", "val", "train", "all")


@dataclass
class Evaluation:
    """What `evaluate` returns. `figures` are matplotlib Figures: a notebook shows them inline."""
    split: str
    dir: Path
    metrics: dict[str, Any]
    notes: list[str]
    unreadable: list[tuple[str, str]]
    figures: dict[str, Any] = field(default_factory=dict)

    def _repr_html_(self) -> str:  # a notebook cell showing an Evaluation shows its report
        """The report in an iframe (srcdoc): its stylesheet stays inside and never restyles the notebook."""
        page = self.dir / "report.html"
        if not page.is_file():
            return f"<pre>{html.escape(repr(self))}</pre>"
        return (f'<iframe srcdoc="{html.escape(page.read_text(), quote=True)}" style="width:100%;height:900px;'
                f'border:1px solid #ddd"></iframe>')


def _run_dir_of(model: str | Path) -> Path | None:
    run = RunDir.of_model(model)
    return run.path if run is not None else None


@dataclass(frozen=True)
class LabelsCsv:
    """Where another folder's labels are when they are not its subfolders: train's --labels, --id-column,
    --label-column (the class, or a tagged model's list of tags) and --tag-columns (one 0/1 column per tag)."""
    path: str | Path
    id_column: str | None = None
    label_column: str | None = None
    tag_columns: str | None = None


def _rows_for(split: str, model: str | Path, data: str | Path | None, classes: list[str],
              notes: list[str], multi_label: bool = False, labels: LabelsCsv | None = None
              ) -> tuple[Path, list[tuple[str, Any]]]:
    """(data root, [(relative path, model class index, or with several tags per image their 0/1 tuple)]) for the
    split to evaluate."""
    run_dir = _run_dir_of(model)
    run_data = None
    if run_dir is not None and RunDir(run_dir).splits.is_file():
        run_data = RunDir(run_dir).data_root() or Path("")
    wanted = SPLITS if split == "all" else (split,)
    if labels is not None and data is None:
        raise UserError("--labels CSV describes another folder: give its DATA folder too")
    if data is None or (run_data is not None and Path(data).expanduser().resolve() == run_data.resolve()):
        if run_data is None:
            raise UserError("give a DATA folder to evaluate on (the model is not inside a run folder with splits.csv)")
        saved = read_splits(RunDir(run_dir).splits, run_data, classes, multi_label)
        return run_data, [row for s in wanted for row in saved.items[s]]
    # another folder: DATA/<class>/*, or with several tags per image DATA/<tag>/* (copies in several folders); or
    # its files with a labels CSV (a split column in it is honoured, as in train)
    if labels is not None and labels.tag_columns and not multi_label:
        raise UserError("--tag-columns is for a model with several tags per image; this one has one class per image")
    if labels is None:
        found = read_tags(data) if multi_label else find_images(data)
    elif multi_label:
        found = read_tags(data, labels.path, labels.id_column, labels.label_column, labels.tag_columns)
    else:
        found = find_images(data, labels.path, labels.id_column, labels.label_column)
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in found.classes if c not in index]
    if unknown:
        raise DataError(f"classes {', '.join(unknown[:5])} in {data} are unknown to the model "
                        f"(it knows {', '.join(classes[:10])}{'...' if len(classes) > 10 else ''})")

    def label(lab):  # the model's class index, or its 0/1 tag row
        if not multi_label:
            return index[found.classes[lab]]
        given = {index[found.classes[t]] for t in lab}
        return tuple(int(i in given) for i in range(len(classes)))
    has_splits = any(s is not None for _, _, s in found.items)
    if has_splits:
        rows = [(rel, label(lab)) for rel, lab, s in found.items if s in wanted]
        if not rows:
            raise DataError(f"{data} has no '{split}' split folder")
    else:
        notes.append(f"{data} has no split folders: every image in it is evaluated")
        rows = [(rel, label(lab)) for rel, lab, _ in found.items]
    return found.root, rows


def hierarchy_metrics(y: np.ndarray, probs: np.ndarray, hierarchy: TwoLevel, split: str, notes: list[str]) -> dict:
    """Coarse-level metrics (coarse probabilities = summed fine ones), consistency and mistake severity."""
    parents = np.asarray(hierarchy.parents)
    coarse_classes = list(hierarchy.coarse_classes)
    coarse_probs = hierarchy.coarse_probabilities(probs)
    y_coarse = parents[y]
    coarse, coarse_notes = compute_metrics(y_coarse, coarse_probs, coarse_classes, split)
    notes += [f"coarse level: {n}" for n in coarse_notes]
    fine_pred, coarse_pred = probs.argmax(1), coarse_probs.argmax(1)
    wrong = fine_pred != y
    within = wrong & (parents[fine_pred] == y_coarse)
    return {"hierarchy_strategy": hierarchy.strategy, "coarse": coarse,
            "hierarchical_consistency": float(np.mean(parents[fine_pred] == coarse_pred)),
            "mistake_severity": {"fine_errors": int(wrong.sum()), "within_coarse": int(within.sum()),
                                 "across_coarse": int((wrong & ~within).sum())}}


# The metrics a label structure adds to the classification metrics above (models/task.py): a new task
# registers its own here.
TASK_METRICS = {"two-level": hierarchy_metrics}


def _write_predictions(path: Path, paths: list[str], y: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "prediction", "confidence"] + [f"prob_{c}" for c in classes])
    pred = probs.argmax(axis=1)
    for p, t, pr, row in zip(paths, y, pred, probs):
        # %.9g round-trips float32 exactly: metrics recomputed from this file match metrics.json
        writer.writerow([p, classes[t], classes[pr], f"{row[pr]:.9g}"] + [f"{v:.9g}" for v in row])
    write_text_atomic(path, buf.getvalue())


GALLERY_PER_CLASS = 4     # images in each class's row
GALLERY_MAX_CLASSES = 20  # rows of a gallery; beyond it, the classes with the lowest recall are shown


def _gallery_sets(images, y: np.ndarray, probs: np.ndarray, classes: list[str], n: int = GALLERY_PER_CLASS,
                  explain=None):
    """The three questions, asked of each class (one row per class, its images of that true class): which it
    gets right most confidently, which it is least sure of, and which it gets wrong most confidently.
    explain(images, class indices) -> overlays: under each class's confident mistakes, a row of heatmaps of
    the wrongly predicted class (what the network looked at to say it)."""
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    shown = list(range(len(classes)))
    if len(classes) > GALLERY_MAX_CLASSES:
        recall = [float(np.mean(pred[y == c] == c)) if np.any(y == c) else 1.0 for c in shown]
        shown = sorted(sorted(shown, key=lambda c: recall[c])[:GALLERY_MAX_CLASSES])
    questions = {
        "gallery_confident_correct": ("Most confident correct, per class", lambda i: pred[i] == y[i], -conf),
        "gallery_least_confident": ("Least confident, per class (closest to the decision boundary)",
                                    lambda i: np.ones(len(i), bool), conf),
        "gallery_top_losses": ("Most confidently wrong, per class", lambda i: pred[i] != y[i], -conf),
    }
    suffix = "" if len(shown) == len(classes) else f" ({len(shown)} of {len(classes)} classes: the lowest recall)"
    out = {}
    for name, (title, keep, order) in questions.items():
        rows = []
        for c in shown:
            members = np.flatnonzero(y == c)
            members = members[keep(members)]
            idx = members[np.argsort(order[members], kind="stable")][:n]
            picked = images[torch.as_tensor(idx, dtype=torch.long)].numpy() if len(idx) else []
            rows.append((classes[c], [img.transpose(1, 2, 0) for img in picked],
                         [f"{classes[pred[i]]} {probs[i, pred[i]]:.2f}" for i in idx]))
            if name == "gallery_top_losses" and explain is not None and len(idx):
                rows.append((f"{classes[c]}: heatmap", explain(torch.from_numpy(np.asarray(picked)),
                                                               [int(pred[i]) for i in idx]),
                             [f"why {classes[pred[i]]}" for i in idx]))
        out[name] = plots.gallery_rows(rows, title + suffix, n)
    return out


def _heatmap_overlays(predictor: Predictor):
    """f(uint8 images, class indices) -> Grad-CAM overlays, or None for a model without a spatial map (mlp)."""
    from ..prediction.explain import overlays, target_layer
    try:
        target_layer(predictor.model, predictor.pre.img_size)
    except UserError:
        return None
    return lambda images, labels: overlays(predictor, images, labels)


def evaluate(model: str | Path, data: str | Path | None = None, split: str = "test", out: str | Path | None = None,
             batch_size: int = 256, device: str = "auto",
             predictor: Predictor | None = None, precomputed: tuple | None = None,
             max_pixels: int | None = None, runtime: str = "auto", precision: str = "auto",
             labels: LabelsCsv | None = None, data_map: bool = False) -> Evaluation:
    """precomputed=(ImageTensors, probabilities) skips decoding and prediction (used at the end of train);
    data_map: add a t-SNE map of the split's embeddings, the mistakes (and the rejected images) marked;
    labels: another folder's labels CSV (default: its class or tag subfolders);
    max_pixels: this command's pixel limit (the model file can only lower it); runtime and precision as
    prediction.runtime says (a given predictor keeps its own). Its notes go to the "imgclass" logger as
    warnings (see imgclass.log) and into the report."""
    if split not in EVAL_SPLITS:
        raise UserError(f"--split must be one of {', '.join(EVAL_SPLITS)}")
    given = predictor is not None
    predictor = predictor or Predictor.load(resolve_model_path(model), device, max_pixels)
    classes = predictor.classes
    notes: list[str] = []
    if precomputed is not None:
        tensors, probs = precomputed
    else:
        root, rows = _rows_for(split, model, data, classes, notes, not predictor.task.exclusive, labels)
        if not rows:
            raise DataError(f"no images in the {split} split to evaluate")
        if not given:
            from ..prediction.runtime import choose_runtime
            predictor.use(choose_runtime(predictor, runtime, precision, len(rows)))
        tensors = load_split(root, rows, predictor.pre)
        if len(tensors) == 0:
            raise DataError(f"none of the {len(rows)} images of the {split} split could be decoded")
        probs = torch.cat([predictor.probabilities(tensors.images[i:i + batch_size])
                           for i in range(0, len(tensors), batch_size)]).numpy()
    y = tensors.labels.numpy()
    if not predictor.task.exclusive:  # several tags per image: their own metrics, figures and report
        return _evaluate_tags(model, split, out, predictor, tensors, probs, notes)
    metrics, metric_notes = compute_metrics(y, probs, classes, split)
    notes += metric_notes
    if (task_metrics := TASK_METRICS.get(predictor.task.name)) is not None:
        metrics.update(task_metrics(y, probs, predictor.task, split, notes))
    metrics["unreadable"] = [{"path": p, "reason": r} for p, r in tensors.bad]
    raw = None
    if predictor.temperature != 1.0:  # what calibration changed on this split
        raw = uncalibrated(probs, predictor.temperature)
        metrics["calibration"] = {"temperature": predictor.temperature,
                                  "ece_uncalibrated": expected_calibration_error(y, raw)}
    run_dir = _run_dir_of(model)
    out_dir, written = _written(run_dir, split, out)
    _write_predictions(written["predictions"], tensors.paths, y, probs, classes)

    context = RunContext.load(run_dir, predictor.header)
    figures: dict[str, Any] = {}
    if context.history:
        figures["training_curves"] = plots.training_curves(context.history)
    figures["confusion_matrix"] = plots.confusion_matrix(metrics["confusion_matrix"], classes, normalize=False)
    figures["confusion_matrix_normalized"] = plots.confusion_matrix(metrics["confusion_matrix"], classes, normalize=True)
    figures["roc_curves"] = plots.roc_curves(y, probs, classes)
    figures["pr_curves"] = plots.pr_curves(y, probs, classes)
    figures["f1_per_class"] = plots.f1_bars(metrics["per_class"])
    figures["reliability"] = plots.reliability_diagram(y, probs, metrics["ece"])
    if raw is not None:
        figures["reliability_uncalibrated"] = plots.reliability_diagram(
            y, raw, metrics["calibration"]["ece_uncalibrated"], "before calibration")
    figures.update(_gallery_sets(tensors.images, y, probs, classes,  # a tensor, or streamed images
                                 explain=_heatmap_overlays(predictor)))
    if data_map:
        figures["data_map"] = _data_map(predictor, tensors, y, probs, notes)
    write_report(out_dir, metrics, notes, _saved(figures, written["figures"]), context)
    _complete(written, metrics)
    for note in notes:
        log.warning(note)
    return Evaluation(split=split, dir=out_dir, metrics=metrics, notes=notes, unreadable=tensors.bad, figures=figures)


def _data_map(predictor: Predictor, tensors, y: np.ndarray, probs: np.ndarray, notes: list[str]):
    """The split's embeddings on a map (plots.data_map), its mistakes and the images --reject would refuse marked."""
    if predictor.model is None:
        raise UserError(f"--map needs the model file (the embeddings come from its backbone), not an "
                        f"{predictor.exported_as} export")
    feats = unit_rows(compute_features(predictor.model, tensors.images, predictor.pre, 64, predictor.device).numpy())
    marked = {"mistake": set(np.flatnonzero(probs.argmax(1) != y).tolist())}
    if predictor.header.reject is not None:  # what predict --reject would answer 'unknown' (its rule, its score)
        marked["rejected (--reject)"] = set(np.flatnonzero(predictor.rejection(True).decide(probs, feats)[0]).tolist())
    return plots.data_map(feats, y, predictor.classes, marked)


def _written(run_dir: Path | None, split: str, out: str | Path | None) -> tuple[Path, dict[str, Path]]:
    """The evaluation folder (--out, else <run>/eval/<split>/) and its files, marked incomplete: metrics.json, which
    compare, the model card and the hub export read, is removed now and written last (_complete), so a kill at any
    moment never leaves a folder that looks evaluated but lacks its predictions, figures or report, or mixes two
    evaluations' files. `imgclass evaluate RUN` redoes an incomplete one."""
    out_dir = Path(out).expanduser() if out else (RunDir(run_dir).eval_dir(split) if run_dir else Path("eval") / split)
    written = RunDir.eval_files(out_dir)
    written["figures"].mkdir(parents=True, exist_ok=True)
    written["metrics"].unlink(missing_ok=True)
    return out_dir, written


def _complete(written: dict[str, Path], metrics: dict[str, Any]) -> None:
    """metrics.json, written last: the evaluation folder is complete."""
    write_text_atomic(written["metrics"], json.dumps(metrics, indent=2) + "\n")


def _saved(figures: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Each figure as folder/<name>.png, written atomically (a figure half-written by a kill is never left)."""
    files = {}
    for name, fig in figures.items():
        files[name] = folder / f"{name}.png"
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        write_bytes_atomic(files[name], png.getvalue())
    return files


def _evaluate_tags(model, split: str, out, predictor: Predictor, tensors, probs: np.ndarray,
                   notes: list[str]) -> Evaluation:
    """evaluate for several tags per image (evaluation/tags.py)."""
    from .tags import tag_figures, tag_galleries, tag_metrics, write_tag_predictions, write_tag_report
    y, classes, task = tensors.labels.numpy(), predictor.classes, predictor.task
    metrics, more = tag_metrics(y, probs, classes, task.threshold_array(len(classes)), split,
                                None if task.calibration_scale is None else task.uncalibrated(probs))
    notes += more
    metrics["unreadable"] = [{"path": p, "reason": r} for p, r in tensors.bad]
    run_dir = _run_dir_of(model)
    out_dir, written = _written(run_dir, split, out)
    write_tag_predictions(written["predictions"], tensors.paths, y, probs, task.decisions(probs), classes)
    context = RunContext.load(run_dir, predictor.header)
    figures: dict[str, Any] = {}
    if context.history:
        figures["training_curves"] = plots.training_curves(context.history, task.score_name, task.train_score_name)
    figures.update(tag_figures(y, probs, metrics, classes))
    figures.update(tag_galleries(tensors.images, y, probs, metrics, classes, explain=_heatmap_overlays(predictor)))
    write_tag_report(out_dir, metrics, notes, _saved(figures, written["figures"]), context)
    _complete(written, metrics)
    for note in notes:
        log.warning(note)
    return Evaluation(split=split, dir=out_dir, metrics=metrics, notes=notes, unreadable=tensors.bad, figures=figures)
