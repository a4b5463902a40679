"""Send your metrics somewhere: a callback that appends one JSON line per event to a file (a Slack or a
dashboard hook would post the same dicts instead).

    imgclass train DATA --callback examples/callbacks/jsonl_metrics.py:MetricsToJsonLines
    # or from Python:
    imgclass.train("DATA", callbacks=[MetricsToJsonLines("my_metrics.jsonl")])

The file is RUN/events.jsonl unless given; each line is {"event": ..., "epoch": ..., ...}: the epoch's row of
metrics.csv after each epoch, and the final metrics of every split once the run is finished (or, if it fails, what
ended it).
"""
import json
import math
from pathlib import Path

import imgclass


class MetricsToJsonLines(imgclass.Callback):
    def __init__(self, path: str | None = None):
        self.path = Path(path) if path else None

    def _write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")

    def before_fit(self, t):
        if self.path is None:
            self.path = (t.run_dir or Path.cwd()) / "events.jsonl"
        self._write({"event": "before_fit", "epoch": t.epoch, "epochs": t.epochs})

    def before_epoch(self, t):
        self._write({"event": "before_epoch", "epoch": t.epoch + 1})

    def after_step(self, t):
        if t.step == 1 or t.step % 10 == 0:  # the first and every tenth step: a file, not a firehose
            self._write({"event": "after_step", "step": t.step, "loss": t.batch_loss})

    def before_validate(self, t):
        self._write({"event": "before_validate", "epoch": t.epoch + 1})

    def after_epoch(self, t):
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in t.history[-1].items()}
        self._write({"event": "after_epoch", **row})

    def after_fit(self, t):
        self._write({"event": "after_fit", "epoch": t.epoch, "stop_reason": t.stop_reason})

    def after_run(self, run):
        self._write({"event": "after_run", "run": str(run.dir), "metrics": run.metrics})

    def run_failed(self, error):
        if self.path is not None:  # None: it failed before the first fit, with nothing written yet
            self._write({"event": "run_failed", "error": f"{type(error).__name__}: {error}"})
