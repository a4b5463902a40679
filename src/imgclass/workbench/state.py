"""What the workbench keeps while it runs, and computes on demand, for the routes in app.py: the runs (looked up again
every RESCAN_SECONDS), each evaluated split's predictions grouped into the task's cells (read once per version of
predictions.csv), one loaded model per run (heatmaps, try-it), the embeddings of a run's training images (nearest
neighbours), and the label review's suspects and decisions. Every name from a request is checked here against what
the runs' files list."""
from __future__ import annotations

import csv
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

from ..core.errors import UserError
from ..curation.review import REVIEW_FOLDER, Decisions, find_suspects, read_suspects
from ..evaluation.cells import Cells
from ..evaluation.tasks import EVALUATIONS
from .runs import Run, find_runs
from .thumbs import Thumbnails

RESCAN_SECONDS = 2.0   # the runs folder is searched again at most this often (a new run appears by itself)
SUSPECTS_FILE = "suspects.csv"  # in the run's review folder: the suspects found, so a restart does not embed again
SUGGESTION_FIELDS = ("path", "split", "given_label", "suggested_label", "quality", "reason", "other", "other_split")


class NotFound(UserError):
    """A run, split, image or figure the runs' files do not list (answered 404)."""


class Workbench:
    def __init__(self, folder: Path, data: str | Path | None, thumbs: Thumbnails,
                 label_issues: str | Path | None = None):
        self.folder, self.thumbs = folder, thumbs
        self.data = Path(data).expanduser() if data else None
        self.label_issues = Path(label_issues).expanduser() if label_issues else None
        self._lock = threading.RLock()
        self._runs: dict[str, Run] = find_runs(folder)
        self._scanned = time.monotonic()
        self._cells: dict[tuple[str, str], tuple[int, list[dict[str, str]], Cells]] = {}
        self._splits: dict[str, tuple[int, dict[str, dict[str, str]]]] = {}
        self._models: dict[str, Any] = {}
        self._decisions: dict[str, Decisions] = {}

    # -- runs and their files ------------------------------------------------------------------------------------
    def runs(self) -> dict[str, Run]:
        with self._lock:
            if time.monotonic() - self._scanned > RESCAN_SECONDS:
                self._runs, self._scanned = find_runs(self.folder), time.monotonic()
            return self._runs

    def run(self, name: str) -> Run:
        found = self.runs().get(name)
        if found is None:
            raise NotFound(f"no run named {name!r} under {self.folder}")
        return found

    def data_root(self, run: Run) -> Path:
        root = self.data or run.folder.data_root()
        if root is None or not root.is_dir():
            raise UserError(f"the data folder of {run.name} ({root}) is not here: start the workbench with --data "
                            f"FOLDER")
        return root

    def split_rows(self, run: Run) -> dict[str, dict[str, str]]:
        """splits.csv's rows by path (read again when the file changes)."""
        stamp = run.folder.splits.stat().st_mtime_ns if run.folder.splits.is_file() else 0
        with self._lock:
            kept = self._splits.get(run.name)
            if kept is None or kept[0] != stamp:
                kept = stamp, {r["path"]: r for r in run.folder.read_csv(run.folder.splits)}
                self._splits[run.name] = kept
            return kept[1]

    def image_file(self, run: Run, path: str) -> Path:
        """The file of an image the run lists (splits.csv), inside its data folder; NotFound for anything else."""
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts or path not in self.split_rows(run):
            raise NotFound(f"{path!r} is not an image of {run.name}")
        return self.data_root(run) / pure

    def figures(self, run: Run, split: str) -> list[str]:
        if split not in run.evaluated_splits():
            raise NotFound(f"{run.name} has no evaluation of the {split!r} split")
        folder = run.folder.eval_dir(split) / "figures"
        return sorted(p.stem for p in folder.glob("*.png")) if folder.is_dir() else []

    # -- the task's picture and its galleries -------------------------------------------------------------------
    def cells(self, run: Run, split: str) -> Cells:
        return self._predictions(run, split)[1]

    def _predictions(self, run: Run, split: str) -> tuple[list[dict[str, str]], Cells]:
        if split not in run.evaluated_splits():
            raise NotFound(f"{run.name} has no evaluation of the {split!r} split")
        file = run.folder.eval_files(run.folder.eval_dir(split))["predictions"]
        stamp = file.stat().st_mtime_ns
        with self._lock:
            kept = self._cells.get((run.name, split))
            if kept is None or kept[0] != stamp:
                rows, columns = read_rows(file)
                kept = stamp, rows, EVALUATIONS[run.task.name].cells(rows, columns)
                self._cells[(run.name, split)] = kept
            return kept[1], kept[2]

    def gallery(self, run: Run, split: str, key: str, offset: int, limit: int) -> dict[str, Any]:
        rows, cells = self._predictions(run, split)
        members = cells.rows(key)
        if members is None:
            raise NotFound(f"no cell {key!r} in this split's picture")
        return {"title": cells.titles.get(key, key), "total": len(members), "offset": offset,
                "items": [_item(rows[k]) for k in members[offset:offset + limit]]}

    # -- the model: heatmaps, neighbours ------------------------------------------------------------------------
    def _model(self, run: Run) -> dict[str, Any]:
        with self._lock:
            if run.name not in self._models:
                from ..inference.predictor import Predictor
                from ..prediction.explain import HeatmapService
                predictor = Predictor.load(run.folder.model, device="cpu")
                self._models[run.name] = {"predictor": predictor, "heatmaps": HeatmapService(predictor)}
            return self._models[run.name]

    def heatmap(self, run: Run, image: Path, label: str | None = None) -> bytes:
        model = self._model(run)
        pixels = model["predictor"].decode(image)
        if isinstance(pixels, str):
            raise UserError(f"{image.name}: {pixels}")
        return model["heatmaps"].png(pixels, label)[2]

    def similar(self, run: Run, image: Path, k: int) -> list[dict[str, Any]]:
        """The k training images nearest to image (cosine of the run's own embeddings), nearest first."""
        from ..models.neighbours import exact_search, unit_rows
        from ..prediction.embed import embed_files
        index = self._training_index(run)
        query, errors = embed_files(index["embedder"], [image])
        if errors[0]:
            raise UserError(f"{image.name}: {errors[0]}")
        found, sims = exact_search(index["vectors"], unit_rows(query), min(k + 1, len(index["paths"])))
        given = str(image.relative_to(self.data_root(run)).as_posix())
        return [{"path": index["paths"][j], "label": index["labels"][j], "similarity": round(float(s), 4)}
                for j, s in zip(found[0].tolist(), sims[0].tolist()) if index["paths"][j] != given][:k]

    def _training_index(self, run: Run) -> dict[str, Any]:
        model = self._model(run)
        with self._lock:
            if "index" not in model:
                from ..curation.similar import backbone
                from ..models.neighbours import unit_rows
                from ..prediction.embed import embed_rows
                embedder = backbone(str(run.folder.path), "cpu")
                train = [r for r in self.split_rows(run).values() if r["split"] == "train"]
                cells = sorted({r["label"] for r in train})
                emb = embed_rows(embedder, self.data_root(run), [(r["path"], cells.index(r["label"])) for r in train],
                                 cells)
                model["index"] = {"embedder": embedder, "vectors": unit_rows(emb.vectors), "paths": emb.paths,
                                  "labels": emb.labels}
            return model["index"]

    # -- label review ---------------------------------------------------------------------------------------------
    def decisions(self, run: Run) -> Decisions:
        with self._lock:
            if run.name not in self._decisions:
                self._decisions[run.name] = Decisions(run.folder.path / REVIEW_FOLDER)
            return self._decisions[run.name]

    def _suspects(self, run: Run) -> list[dict[str, Any]] | None:
        file = run.folder.path / REVIEW_FOLDER / SUSPECTS_FILE
        if file.is_file():
            return read_suspects(file)
        if self.label_issues is not None:
            listed = self.split_rows(run)
            return [s for s in read_suspects(self.label_issues) if s.get("path") in listed]
        return None

    def find_suspects(self, run: Run) -> None:
        from ..curation.review import write_suspects
        found = find_suspects(run.task.name, self.data_root(run), list(self.split_rows(run).values()))
        write_suspects(run.folder.path / REVIEW_FOLDER / SUSPECTS_FILE, found)

    def decide(self, run: Run, path: str, action: str, label: Any) -> None:
        if path not in self.split_rows(run):
            raise NotFound(f"{path!r} is not an image of {run.name}")
        self.decisions(run).decide(path, action, None if label is None else str(label))

    def review(self, run: Run) -> dict[str, Any]:
        decisions = self.decisions(run)
        suspects = self._suspects(run)
        made = decisions.all()
        return {"suspects": None if suspects is None else
                [{**{k: s.get(k, "") for k in SUGGESTION_FIELDS},
                  "decision": vars(made[s["path"]]) if s["path"] in made else None} for s in suspects],
                "decided": len(made), "classes": list(run.header.classes),
                "files": {"relabel": str(decisions.relabel_file), "exclude": str(decisions.exclude_file)},
                "command": run.command(relabel=str(decisions.relabel_file), exclude=str(decisions.exclude_file))}


def _item(row: dict[str, str]) -> dict[str, Any]:
    """One gallery tile: predictions.csv's row without its probabilities, and its three most probable answers."""
    probs = sorted(((k[len("prob_"):], float(v)) for k, v in row.items() if k.startswith("prob_") and v),
                   key=lambda kv: -kv[1])[:3]
    return {"path": row["path"], "fields": {k: v for k, v in row.items() if not k.startswith("prob_")},
            "top": [{"label": n, "probability": round(p, 4)} for n, p in probs]}



def read_rows(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """A CSV's rows and its columns."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader), list(reader.fieldnames or [])
