"""The label structures a model can have, one module each, behind one interface (base.Task):

  single-label   one class per image                     classes.py  SingleLabel
  two-level      coarse -> fine classes                  classes.py  TwoLevel
  multi-label    several tags per image                  tags.py     MultiLabel
  regression     a number per image                      numbers.py  Regression

TASKS is the one registry: the model-file reader (`task_from_header`) and training (`task_for_data`, which asks each
task whether it serves the data's labels) both read it. To add a task: a module here with a Task subclass, an entry
in TASKS, the kind of label it reads (data/labels.py), its evaluation (evaluation/tasks.py) and the option that asks
for it (training/config.py); nothing else asks which task a model has.
"""
from __future__ import annotations

from typing import Any

from ...core.errors import DataError
from .base import DEFAULT_TOP_K, Finished, Task, TrainingSettings, top_labels  # noqa: F401
from .classes import SingleLabel, TwoLevel
from .numbers import Regression
from .tags import MultiLabel

SINGLE_LABEL = SingleLabel()
# In the order `task_for_data` asks them: the first that claims a data folder's labels serves them.
TASKS: dict[str, type[Task]] = {"single-label": SingleLabel, "two-level": TwoLevel, "multi-label": MultiLabel,
                                "regression": Regression}


def task_class_for(found) -> type[Task]:
    """The kind of task serving the labels found in a data folder (data.find.Found)."""
    for cls in TASKS.values():
        if cls.claims(found):
            return cls
    raise DataError(f"no task serves the labels found in {found.root} ({found.kind.name})")


def task_for_data(found, split, cfg: TrainingSettings) -> Task:
    """The task serving the labels found in a data folder (data.find.Found) and split."""
    return task_class_for(found).from_data(found, split, cfg)


def task_from_header(entry: Any, classes, bad, task: Any = None) -> Task:
    """The task a model file's "task" entry (format 2 on: its "name" a key of TASKS) or "hierarchy" entry (format 1:
    two-level labels) describes; neither: one class per image. bad(what) makes the error for a malformed entry."""
    if task is not None:
        if not isinstance(task, dict) or task.get("name") not in TASKS:
            raise bad("'task' names no label structure this imgclass knows")
        return TASKS[task["name"]].from_entry(task, classes, bad)
    if entry is None:
        return SINGLE_LABEL
    return TwoLevel.from_header(entry, classes, bad)
