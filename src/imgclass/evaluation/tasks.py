"""What evaluate computes, writes and draws for each task (models/tasks), registered under the task's name: its
metrics (metrics.json), its predictions.csv, its figures and its written report. evaluate.py runs the one path every
task shares (the split's images, the model's answers, the folder, the training curves, metrics.json last) and asks
the task's entry here for the rest."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from .cells import (class_cells, class_item_scores, no_item_scores, number_cells, tag_cells,
                    tag_item_scores)
from .classes import class_figures, class_metrics, coarse_line, two_level_metrics, write_class_predictions
from .numbers import number_figures, number_metrics, write_number_predictions, write_number_report
from .report import write_report
from .tags import tag_evaluation_figures, tag_evaluation_metrics, write_tag_evaluation_predictions, write_tag_report


@dataclass(frozen=True)
class TaskEvaluation:
    metrics: Callable            # (y, outputs, predictor, split, notes) -> metrics.json's dict
    write_predictions: Callable  # (path, relative paths, y, outputs, predictor) -> predictions.csv written
    figures: Callable            # (tensors, y, outputs, metrics, predictor, notes, explain, with_map) -> {name: Figure}
    write_report: Callable       # (folder, metrics, notes, {name: PNG path}, RunContext) -> report.md, report.html
    cells: Callable              # (predictions.csv rows, its columns) -> cells.Cells: what the workbench shows
    item_scores: Callable        # metrics.json -> (score name, {class or tag: score}): a comparison's per-class lines


def _class_predictions(path, paths, y, probs, predictor):
    write_class_predictions(path, paths, y, probs, predictor.classes)


CLASSES = TaskEvaluation(class_metrics, _class_predictions, class_figures, write_report, class_cells, class_item_scores)
EVALUATIONS: dict[str, TaskEvaluation] = {
    "single-label": CLASSES,
    "two-level": TaskEvaluation(two_level_metrics, _class_predictions, class_figures,
                                partial(write_report, results_more=coarse_line), class_cells,
                                class_item_scores),
    "multi-label": TaskEvaluation(tag_evaluation_metrics, write_tag_evaluation_predictions, tag_evaluation_figures,
                                  write_tag_report, tag_cells, tag_item_scores),
    "regression": TaskEvaluation(number_metrics, write_number_predictions, number_figures, write_number_report,
                                 number_cells, no_item_scores),
}
