"""The run folder: every file name in one place, with its readers and writers.

RUN/
  config.yaml        the resolved configuration, as asked (defaults < --config file < options); written once
  splits.csv         path,label,split for every image (byte-identical for the same data and seed); written once
  bad_files.csv      files that could not be decoded, with the reason (only when there are some)
  head_metrics.csv   the head stage of fine-tuning, one row per epoch (only when there is one)
  metrics.csv        one row per epoch; tensorboard/ holds the same as event files
  checkpoints/       last.safetensors (everything --resume needs), best.safetensors (best val accuracy)
  model.safetensors  the self-describing model file (best weights, classes, preprocessing, metrics)
  results.json       final accuracy per split, run facts and the plan (choices made from data and clock)
  eval/<split>/      the evaluation of a split: metrics.json, predictions.csv, figures/, report.md|html
Rank 0 of a multi-process run writes; the other ranks only read.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .files import write_text_atomic

RUN_LOCK = ".lock"  # held by the process training a run folder (RunDir.held)


@dataclass(frozen=True)
class RunDir:
    path: Path

    config = property(lambda self: self.path / "config.yaml")
    splits = property(lambda self: self.path / "splits.csv")
    bad_files = property(lambda self: self.path / "bad_files.csv")
    head_metrics = property(lambda self: self.path / "head_metrics.csv")
    metrics = property(lambda self: self.path / "metrics.csv")
    tensorboard = property(lambda self: self.path / "tensorboard")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last = property(lambda self: self.path / "checkpoints" / "last.safetensors")
    best = property(lambda self: self.path / "checkpoints" / "best.safetensors")
    model = property(lambda self: self.path / "model.safetensors")
    results = property(lambda self: self.path / "results.json")

    def eval_dir(self, split: str) -> Path:
        return self.path / "eval" / split

    @staticmethod
    def eval_files(folder: Path) -> dict[str, Path]:
        """The files of one evaluation folder (eval/<split>/, or evaluate --out)."""
        return {"metrics": folder / "metrics.json", "predictions": folder / "predictions.csv",
                "figures": folder / "figures", "report.md": folder / "report.md", "report.html": folder / "report.html"}

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Images per class (per tag, when splits.csv holds several tags per image as JSON lists) in each split."""
        counts: dict[str, dict[str, int]] = {}
        for row in self.read_csv(self.splits):
            names = _labels_of(row["label"])
            per = counts.setdefault(row["split"], {})
            for name in names:
                per[name] = per.get(name, 0) + 1
        return counts

    def read_eval_metrics(self, split: str) -> dict[str, Any] | None:
        """eval/<split>/metrics.json, or None when that split was not evaluated."""
        path = self.eval_files(self.eval_dir(split))["metrics"]
        return json.loads(path.read_text()) if path.is_file() else None

    def eval_predictions(self, split: str) -> list[dict[str, str]]:
        """eval/<split>/predictions.csv's rows ([] when that split was not evaluated)."""
        return self.read_csv(self.eval_files(self.eval_dir(split))["predictions"])

    @classmethod
    def of_model(cls, model: str | Path) -> "RunDir | None":
        """The run folder a model belongs to (given as the folder, its model.safetensors or a checkpoint),
        or None for a model file outside any run."""
        p = Path(model).expanduser()
        path = p if p.is_dir() else p.parent.parent if p.parent.name == "checkpoints" else p.parent
        run = cls(path)
        return run if run.is_run() else None

    def read_csv(self, path: Path) -> list[dict[str, str]]:
        """Rows of one of the run's CSV files (bad files, splits, history, predictions); [] when absent."""
        if not path.is_file():
            return []
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))

    def is_run(self) -> bool:
        return self.config.is_file()

    @classmethod
    def claim(cls, out: str | Path | None, base: Path = Path("runs"), prefix: str = "train") -> "RunDir":
        """The folder a new run writes to: --out (which must be empty), or the next free runs/train-N. Claimed
        atomically: mkdir without exist_ok for a new folder, and in an empty --out the run's lock file created
        with O_EXCL, so two runs started together (naming the same --out or not) never share a folder."""
        if out:
            path = Path(out).expanduser()
            if path.is_file():
                raise UserError(f"--out {path} is a file, not a folder")
            if path.exists() and any(path.iterdir()):
                raise UserError(f"run folder {path} is not empty; continue it with `imgclass train --resume {path}` "
                                f"or choose another --out")
            path.mkdir(parents=True, exist_ok=True)
            try:
                os.close(os.open(path / RUN_LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                raise UserError(f"run folder {path} was just claimed by another run: choose another --out") from None
            return cls(path)
        base.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            try:
                (base / f"{prefix}-{n}").mkdir()
                return cls(base / f"{prefix}-{n}")
            except FileExistsError:
                n += 1

    @contextlib.contextmanager
    def held(self):
        """This run folder, held by this process while it trains (a file lock, released at exit or by a kill): a
        second `train --resume` of the same folder is refused with one line instead of writing the same
        checkpoints."""
        from filelock import FileLock, Timeout  # deferred: only training holds run folders
        lock = FileLock(self.path / RUN_LOCK, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise UserError(f"run folder {self.path} is in use by another imgclass process (training it); wait for "
                            f"it to finish or stop it first") from None
        try:
            yield self
        finally:
            lock.release()

    def data_root(self) -> Path | None:
        """The data folder the run was trained on, as its config.yaml names it (~ expanded); None when it names none.
        The one reader of it: evaluate, the parity images and int8's calibration all ask here."""
        data = self.read_config_dict().get("data")
        return Path(data).expanduser() if data else None

    def read_config_dict(self) -> dict[str, Any]:
        return (yaml.safe_load(self.config.read_text()) or {}) if self.config.is_file() else {}

    def read_results(self) -> dict[str, Any]:
        return json.loads(self.results.read_text()) if self.results.is_file() else {}

    def write_results(self, results: dict[str, Any]) -> None:
        write_text_atomic(self.results, json.dumps(results, indent=2) + "\n")

    def read_history(self) -> list[dict[str, str]]:
        return self.read_csv(self.metrics)

    def write_rows(self, path: Path, rows: list[dict[str, Any]] | list[tuple], header: list[str] | None = None) -> None:
        """A small CSV (bad files, the head stage's epochs), written atomically."""
        import io
        buf = io.StringIO()
        if header is not None:
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        else:
            dict_writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
            dict_writer.writeheader()
            dict_writer.writerows(rows)
        write_text_atomic(path, buf.getvalue())


def best_epoch_phrase(results: dict) -> str:
    """Where the kept weights come from, in words: best_epoch 0 means the head stage of a two-stage fine-tune."""
    if results.get("best_epoch"):
        return f"epoch {results['best_epoch']}"
    return "the head stage (fine-tuning did not beat the head on frozen features)"


def tags_of_cell(cell: str) -> list[str] | None:
    """A splits.csv label cell holding several tags (a JSON list of names), or None when it is not one."""
    if not (cell.startswith("[") and cell.endswith("]")):
        return None
    try:
        names = json.loads(cell)
    except ValueError:
        return None
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def _labels_of(cell: str) -> list[str]:
    """A splits.csv label cell: a class name, or several tags."""
    tags = tags_of_cell(cell)
    return [cell] if tags is None else tags
