"""`imgclass evaluate MODEL [DATA] --split test`: predictions, metrics.json, predictions.csv,
figures and a written report (report.html, report.md) in <run>/eval/<split>/ or --out."""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.images import load_split
from ..data.labels import LabelSource
from ..data.split import SPLITS, read_splits
from ..core import log
from ..core.errors import DataError, UserError
from ..core.figures import save_figure
from ..core.files import write_text_atomic
from ..models.modelfile import resolve_model_path
from ..inference.predictor import Predictor
from ..core.rundir import RunDir
from . import plots
from .report import RunContext
from .tasks import EVALUATIONS

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
    task: Any = None  # the model's task (models/tasks): what the metrics are

    @property
    def headline(self) -> str:
        """The evaluation in one line: its task's main scores, the images, the unreadable ones."""
        return (f"{self.split}: {self.task.headline(self.metrics)}, n={self.metrics['n']}"
                + (f", unreadable {len(self.unreadable)}" if self.unreadable else ""))

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
              notes: list[str], kind, labels: LabelsCsv | None = None) -> tuple[Path, list[tuple[str, Any]]]:
    """(data root, [(relative path, the label in the model's terms: class index, 0/1 tag tuple, number)]) for the
    split to evaluate; kind: the model's kind of label (data/labels.py)."""
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
        saved = read_splits(RunDir(run_dir).splits, run_data, classes, kind)
        return run_data, [row for s in wanted for row in saved.items[s]]
    # another folder: DATA/<class>/*, or with several tags per image DATA/<tag>/* (copies in several folders); or
    # its files with a labels CSV (a split column in it is honoured, as in train)
    source = LabelSource(data) if labels is None else LabelSource(data, labels.path, labels.id_column,
                                                                  labels.label_column, labels.tag_columns)
    found = kind.find(source)
    label = kind.to_model(found, classes)  # (a class the model does not know is refused here)
    has_splits = any(s is not None for _, _, s in found.items)
    if has_splits:
        rows = [(rel, label(lab)) for rel, lab, s in found.items if s in wanted]
        if not rows:
            raise DataError(f"{data} has no '{split}' split folder")
    else:
        notes.append(f"{data} has no split folders: every image in it is evaluated")
        rows = [(rel, label(lab)) for rel, lab, _ in found.items]
    return found.root, rows


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
    warnings (see imgclass.core.log) and into the report."""
    if split not in EVAL_SPLITS:
        raise UserError(f"--split must be one of {', '.join(EVAL_SPLITS)}")
    given = predictor is not None
    predictor = predictor or Predictor.load(resolve_model_path(model), device, max_pixels)
    if data_map:
        predictor.task.require("data_map")
    classes = predictor.classes
    run = RunDir.of_model(model) if data is None else None
    # the run's own notes on its data (a class or tag left out of the model, a split too small...) belong in the
    # report of its own splits: they say what the numbers cover
    notes: list[str] = list(run.read_results().get("data_notes", [])) if run is not None else []
    if precomputed is not None:
        tensors, probs = precomputed
    else:
        root, rows = _rows_for(split, model, data, classes, notes, predictor.task.label_kind, labels)
        if not rows:
            raise DataError(f"no images in the {split} split to evaluate")
        if not given:
            from ..inference.runtime import choose_runtime
            predictor.use(choose_runtime(predictor, runtime, precision, len(rows)))
        tensors = load_split(root, rows, predictor.pre)
        if len(tensors) == 0:
            raise DataError(f"none of the {len(rows)} images of the {split} split could be decoded")
        probs = torch.cat([predictor.probabilities(tensors.images[i:i + batch_size])
                           for i in range(0, len(tensors), batch_size)]).numpy()
    y = tensors.labels.numpy()
    task_evaluation = EVALUATIONS[predictor.task.name]  # what this task computes, writes and draws
    metrics = task_evaluation.metrics(y, probs, predictor, split, notes)
    metrics["unreadable"] = [{"path": p, "reason": r} for p, r in tensors.bad]
    run_dir = _run_dir_of(model)
    out_dir, written = _written(run_dir, split, out)
    task_evaluation.write_predictions(written["predictions"], tensors.paths, y, probs, predictor)
    context = RunContext.load(run_dir, predictor.header)
    figures: dict[str, Any] = {}
    if context.history:
        figures["training_curves"] = plots.training_curves(context.history, predictor.task.score_name,
                                                           predictor.task.train_score_name)
    figures.update(task_evaluation.figures(tensors, y, probs, metrics, predictor, notes, _heatmap_overlays(predictor),
                                           data_map))
    task_evaluation.write_report(out_dir, metrics, notes, _saved(figures, written["figures"]), context)
    _complete(written, metrics)
    for note in notes:
        log.warning(note)
    return Evaluation(split=split, dir=out_dir, metrics=metrics, notes=notes, unreadable=tensors.bad, figures=figures,
                      task=predictor.task)


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
        files[name] = save_figure(fig, folder / f"{name}.png")
    return files
