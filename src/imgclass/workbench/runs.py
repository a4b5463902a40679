"""The runs the workbench shows: every run folder under the folder it was started on (a folder with a config.yaml and a
model file, at any depth: sweeps and tune trials nest them), each named by its path relative to that folder, the
only names the page may use (a name the list does not hold is refused: no path from a request reaches the disk).
What each says of itself comes from its own files: the model file's header (task, model), config.yaml (data, budget),
results.json (scores, plan, date)."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.options import to_argv
from ..core.rundir import RunDir
from ..models.header import ModelHeader
from ..models.modelfile import read_header
from ..training.config import FIELD_NAMES, TrainConfig

MAX_DEPTH = 4  # folders below the runs folder searched for runs (runs/sweep-1/trial-3 is two)


@dataclass(frozen=True)
class Run:
    name: str          # the path below the runs folder, with "/" (what the page calls it)
    folder: RunDir
    header: ModelHeader

    @property
    def task(self):
        return self.header.task

    def summary(self) -> dict[str, Any]:
        """The runs list's row: task, model, data, budget, scores (the task's own columns, as compare shows them),
        date."""
        results, cfg = self.folder.read_results(), self.folder.read_config_dict()
        final = results.get("metrics", {})
        scores = self.task.compare_cells(final, self.folder.read_eval_metrics("test"))
        when = datetime.fromtimestamp(self.folder.model.stat().st_mtime, timezone.utc)
        return {"name": self.name, "task": self.task.answering(self.header.classes), "model": self.header.arch.name,
                "input_size": self.header.img_size, "data": str(cfg.get("data") or ""),
                "budget": cfg.get("time_budget"), "epochs": results.get("epochs_run"),
                "scores": {k: v for k, v in scores.items() if v is not None},
                "evaluated": self.evaluated_splits(), "date": when.strftime("%Y-%m-%d %H:%M UTC")}

    def evaluated_splits(self) -> list[str]:
        return [s for s in ("test", "val", "train") if self.folder.eval_files(self.folder.eval_dir(s))
                ["predictions"].is_file()]

    def command(self, **changes: Any) -> str:
        """The command line that reproduces this run (its config.yaml's options that differ from the defaults), with
        changes (TrainConfig fields: relabel=FILE for the next run after a label review)."""
        cfg = {k: v for k, v in self.folder.read_config_dict().items() if k in FIELD_NAMES and k != "out"}
        cfg.update(changes)
        data = cfg.pop("data", None) or "DATA"
        try:
            argv = to_argv(TrainConfig(**cfg))
        except (TypeError, ValueError, UserError) as exc:  # a config.yaml from another release: say so
            return f"(config.yaml does not parse as this release's options: {exc})"
        return "imgclass train " + " ".join(shlex.quote(str(a)) for a in [data, *argv])  # DATA: train's argument


def find_runs(folder: str | Path) -> dict[str, Run]:
    """{name: Run} for every run folder under folder (the folder itself counts when it is one), by name."""
    base = Path(folder).expanduser()
    if not base.is_dir():
        raise UserError(f"no runs folder at {base}")
    found: dict[str, Run] = {}
    for config in sorted(_configs(base, MAX_DEPTH)):
        run = RunDir(config.parent)
        if not run.model.is_file():
            continue  # still training, or stopped before its model file: nothing to show yet
        try:
            header = read_header(run.model)
        except UserError:
            continue  # a model file this release cannot read is not shown (compare says why, for one run)
        name = config.parent.relative_to(base).as_posix()
        name = config.parent.name if name == "." else name  # started on a run folder itself
        found[name] = Run(name, run, header)
    return found


def _configs(base: Path, depth: int):
    if (base / "config.yaml").is_file():
        yield base / "config.yaml"
    if depth > 0:
        for child in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
                            and p.name not in ("checkpoints", "eval", "tensorboard")):
            yield from _configs(child, depth - 1)

