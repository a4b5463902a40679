"""Experiment tracking: `imgclass train --track mlflow|wandb` (and tune, sweep). Each tracker is a Callback
(training/integrations/user_callbacks.py says how to write one) that sends, from rank 0:

- at the first fit: the resolved config as parameters, and the run's name;
- after every epoch: its row of metrics.csv (train_loss, train_acc, val_loss, val_acc, lr, seconds), at step
  = the epoch;
- once the run is finished (after_run): the final metrics of each split, the head stage's metrics, the plan's
  choices, the weights' origin and the data summary as tags, and as artifacts the model file, config.yaml,
  metrics.csv, results.json and each evaluation's report and figures;
- if the run ends by an error instead (run_failed): the status FAILED (KILLED for Ctrl-C; in W&B a non-zero
  exit code), so that no run is left RUNNING.

MLflow (the `mlflow` extra) logs to $MLFLOW_TRACKING_URI, else a local store in ./mlruns (SQLite), in the experiment
$MLFLOW_EXPERIMENT_NAME (default "imgclass"); a run started while another is active (tune's study) is nested in
it. W&B (the `wandb` extra) runs offline unless an API key is configured (WANDB_API_KEY, or WANDB_MODE=online
after `wandb login`), its files in RUN/wandb (`wandb sync` uploads them later); project $WANDB_PROJECT, default
"imgclass"; tune's trials share the study's group.

A tracking server that fails mid-run costs a warning, never the run: the tracker says what failed once and
stops sending (Ultralytics' users lost metrics silently; ours are still in the run folder).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

from ...core import log
from ...core.extras import require
from ...core.rundir import RunDir
from ..loop.fit import Callback

EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
GROUP_ENV = "IMGCLASS_TRACK_GROUP"  # tune and sweep name their study here: W&B's group, an MLflow tag


def trackers(plan, run_dir: Path) -> list[Callback]:
    """The tracker the config asks for (none, mlflow or wandb), its extra checked before any work."""
    kind = plan.cfg.track
    if kind == "mlflow":
        return [MLflowTracker(plan, run_dir)]
    if kind == "wandb":
        return [WandbTracker(plan, run_dir)]
    return []


def flat_params(cfg) -> dict[str, str]:
    """The config as flat string parameters (model_args.width=8)."""
    out = {}
    for key, value in dataclasses.asdict(cfg).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": str(v) for k, v in value.items()})
        else:
            out[key] = str(value)
    return out


def numbers(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a row (metrics.csv, a split's metrics), keyed with prefix."""
    out = {}
    for key, value in row.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number) and not isinstance(value, bool):
            out[prefix + key] = number
    return out


def finished_facts(run) -> tuple[dict[str, float], dict[str, str], list[Path]]:
    """(final metrics, tags, artifact files) of a finished Run."""
    folder = RunDir(Path(run.dir))
    metrics = {}
    for split, values in (run.metrics or {}).items():
        metrics.update(numbers(values, f"{split}_"))
    for row in folder.read_csv(folder.head_metrics):
        metrics.update(numbers({k: v for k, v in row.items() if k != "epoch"}, "head_"))
    results = folder.read_results() if folder.results.is_file() else {}
    tags = {f"plan.{k}": str(v) for k, v in (results.get("plan") or {}).items()}
    try:
        from ...models.modelfile import read_header
        weights = read_header(folder.model).weights or {}
    except Exception:  # noqa: BLE001 - no model file (evaluation-free runs still have one; be safe)
        weights = {}
    tags.update({f"weights.{k}": str(v) for k, v in weights.items() if v is not None})
    tags["weights.origin"] = str(weights.get("location") or weights.get("source") or "none (from scratch)")
    counts = folder.split_counts()
    tags.update({f"data.{split}_images": str(sum(c.values())) for split, c in counts.items()})
    tags["data.classes"] = str(len(run.classes))
    tags["data.folder"] = str(run.config.data)
    files = [p for p in (folder.model, folder.config, folder.metrics, folder.results, folder.splits) if p.is_file()]
    files += sorted(p for p in (folder.path / "eval").rglob("*") if p.suffix in (".html", ".md", ".png", ".json"))
    return metrics, tags, files


class Tracker(Callback):
    """What both trackers share: start once, send each epoch, finish once; a failure is one warning."""
    order = 9  # after the built-in callbacks: the epoch's row is final

    def __init__(self, plan, run_dir: Path):
        self.plan, self.run_dir, self.started, self.broken = plan, Path(run_dir), False, False

    def _safely(self, what: str, action) -> None:
        if self.broken:
            return
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a tracking server's failure must not end a training run
            self.broken = True
            log.warning(f"--track {self.plan.cfg.track}: {what} failed ({type(exc).__name__}: {exc}); nothing more "
                        f"is sent to it. The run folder {self.run_dir} has everything.")

    def before_fit(self, t) -> None:
        if not self.started:
            self.started = True
            self._safely("starting the run", self.start)

    def after_epoch(self, t) -> None:
        row = numbers({k: t.history[-1].get(k) for k in EPOCH_KEYS})
        epoch = int(t.history[-1]["epoch"])
        self._safely(f"sending epoch {epoch}", lambda: self.log_epoch(row, epoch))

    def after_run(self, run) -> None:
        if self.started:
            self._safely("sending the results", lambda: self.finish(*finished_facts(run)))

    def run_failed(self, error: BaseException) -> None:
        if self.started:  # the epochs sent stay; the run is marked failed (killed, for Ctrl-C), not left running
            self._safely("ending the failed run", lambda: self.fail(isinstance(error, KeyboardInterrupt)))

    def start(self) -> None: ...
    def log_epoch(self, row: dict[str, float], epoch: int) -> None: ...
    def finish(self, metrics: dict[str, float], tags: dict[str, str], files: list[Path]) -> None: ...
    def fail(self, interrupted: bool) -> None: ...


def _mlflow_store(mlflow) -> None:
    """$MLFLOW_TRACKING_URI, else a local store in ./mlruns (of the current folder): mlflow.db (SQLite) and
    artifacts/. MLflow 3 refuses its older plain-file store ("maintenance mode") unless MLFLOW_ALLOW_FILE_STORE
    is set, and recommends SQLite: `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` shows the runs.
    The experiment: $MLFLOW_EXPERIMENT_NAME, else "imgclass"."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "imgclass")
    if os.environ.get("MLFLOW_TRACKING_URI"):  # set again: an earlier run in this process may have set another
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    else:
        root = Path.cwd() / "mlruns"
        root.mkdir(exist_ok=True)
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        if mlflow.get_experiment_by_name(name) is None:
            mlflow.create_experiment(name, artifact_location=(root / "artifacts").as_uri())
    mlflow.set_experiment(name)


class MLflowTracker(Tracker):
    def __init__(self, plan, run_dir: Path):
        super().__init__(plan, run_dir)
        self.mlflow = require("mlflow", "mlflow", "--track mlflow")
        self.run_id: str | None = None

    def start(self) -> None:
        mlflow = self.mlflow
        _mlflow_store(mlflow)
        active = mlflow.active_run()
        run = mlflow.start_run(run_name=self.run_dir.name, nested=active is not None)
        self.run_id = run.info.run_id
        client = mlflow.MlflowClient()
        params = flat_params(self.plan.cfg)
        client.log_batch(self.run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in params.items()])
        client.set_tag(self.run_id, "imgclass.run_folder", str(self.run_dir.resolve()))
        if os.environ.get(GROUP_ENV):
            client.set_tag(self.run_id, "imgclass.group", os.environ[GROUP_ENV])

    def log_epoch(self, row: dict[str, float], epoch: int) -> None:
        self.mlflow.MlflowClient().log_batch(self.run_id, metrics=[
            self.mlflow.entities.Metric(k, v, int(1000 * time.time()), epoch) for k, v in row.items()])

    def finish(self, metrics: dict[str, float], tags: dict[str, str], files: list[Path]) -> None:
        client = self.mlflow.MlflowClient()
        client.log_batch(self.run_id, metrics=[self.mlflow.entities.Metric(k, v, 0, 0) for k, v in metrics.items()],
                         tags=[self.mlflow.entities.RunTag(k, v[:5000]) for k, v in tags.items()])
        for path in files:
            relative = path.relative_to(self.run_dir)
            client.log_artifact(self.run_id, str(path), str(relative.parent) if relative.parent != Path(".") else None)
        self._end("FINISHED")

    def fail(self, interrupted: bool) -> None:
        self._end("KILLED" if interrupted else "FAILED")

    def _end(self, status: str) -> None:
        active = self.mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            self.mlflow.end_run(status)
        else:
            self.mlflow.MlflowClient().set_terminated(self.run_id, status)


class WandbTracker(Tracker):
    def __init__(self, plan, run_dir: Path):
        super().__init__(plan, run_dir)
        self.wandb = require("wandb", "wandb", "--track wandb")
        self.run = None

    def start(self) -> None:
        online = os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online"
        (self.run_dir / "wandb").mkdir(exist_ok=True)
        self.run = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT", "imgclass"), name=self.run_dir.name, dir=str(self.run_dir),
            config=json.loads(json.dumps(dataclasses.asdict(self.plan.cfg), default=str)),
            mode="online" if online else "offline", group=os.environ.get(GROUP_ENV) or None,
            reinit="create_new")

    def log_epoch(self, row: dict[str, float], epoch: int) -> None:
        self.run.log(row, step=epoch)

    def finish(self, metrics: dict[str, float], tags: dict[str, str], files: list[Path]) -> None:
        self.run.summary.update({**metrics, **tags})
        artifact = self.wandb.Artifact(f"model-{self.run_dir.name}", type="model", metadata=tags)
        for path in files:
            artifact.add_file(str(path), name=path.relative_to(self.run_dir).as_posix())
        self.run.log_artifact(artifact)
        self.run.finish()

    def fail(self, interrupted: bool) -> None:
        self.run.finish(exit_code=130 if interrupted else 1)


@contextlib.contextmanager
def study(kind: str | None, name: str) -> Iterator[None]:
    """tune's and sweep's runs grouped: under one MLflow parent run (each trial's run is nested in it) or one W&B
    group (GROUP_ENV), named after the study."""
    if kind not in ("mlflow", "wandb"):
        yield
        return
    previous = os.environ.get(GROUP_ENV)
    os.environ[GROUP_ENV] = name
    try:
        if kind == "wandb":
            yield
            return
        mlflow = require("mlflow", "mlflow", "--track mlflow")
        _mlflow_store(mlflow)
        with mlflow.start_run(run_name=name, tags={"imgclass.group": name}):
            yield
    finally:
        if previous is None:
            os.environ.pop(GROUP_ENV, None)
        else:
            os.environ[GROUP_ENV] = previous
