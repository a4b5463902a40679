"""Your own callbacks: `imgclass.train(callbacks=[MyCallback()])` from Python, or `imgclass train DATA --callback
module:Class` (or `--callback path/to/file.py:Class`, several comma-separated; `callback="module:Class"` from
Python, or `callback:` in a config file) from the command line.

A callback subclasses `imgclass.Callback` and overrides the events it needs; each receives the Trainer (its
progress: epoch, step, history with each epoch's row, stop...), except `after_run`, which receives the finished
Run (its folder, metrics and evaluations) once the model file and the evaluations are written, and
`run_failed`, which receives the exception that ended the run instead (Ctrl-C: KeyboardInterrupt):

    import json, imgclass

    class MetricsToJsonLines(imgclass.Callback):      # examples/callbacks/jsonl_metrics.py
        def after_epoch(self, t):
            with open("metrics.jsonl", "a") as fh:
                fh.write(json.dumps(t.history[-1]) + "\\n")

The events, in order: before_fit, then per epoch before_epoch, after_step (each step), before_validate,
after_epoch; after_fit; once at the end after_run, or run_failed. A run with staged fine-tuning fits more than once, so the
fit events come once per phase. A callback named on the command line is recorded in the run's config.yaml, so
`--resume` builds it again; one passed from Python is not (pass it again). MLflow and W&B tracking
(`--track`) are such callbacks (training/integrations/tracking.py).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from ...core import log
from ...core.errors import UserError
from ..loop.fit import Callback


def load_callbacks(specs: str | None) -> list[Callback]:
    """Build the callbacks named by --callback (module:Class or file.py:Class, comma-separated)."""
    return [_build(spec.strip()) for spec in (specs or "").split(",") if spec.strip()]


def _build(spec: str) -> Callback:
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise UserError(f"--callback {spec!r}: expected module:Class or path/to/file.py:Class")
    # said every time: a config file (--config, a run's config.yaml on --resume, tune's best.yaml) can name a
    # callback, and loading it runs its code
    log.warning(f"--callback {spec}: running the code of {where} (named by the options or a config file)")
    module = _module_from_file(Path(where), spec) if where.endswith(".py") else _module(where, spec)
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Callback)):
        raise UserError(f"--callback {spec!r}: {name} in {where} is not a subclass of imgclass.Callback")
    try:
        return cls()
    except Exception as exc:  # noqa: BLE001 - the user's constructor: its error, named
        raise UserError(f"--callback {spec!r}: {name}() failed: {type(exc).__name__}: {exc}") from None


def _module(name: str, spec: str):
    # like `python -m` and uvicorn: a module in the current folder is importable by name, for this import alone
    # (left first on sys.path, a file there could shadow every later import of the process)
    added = "" not in sys.path and str(Path.cwd()) not in sys.path
    if added:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UserError(f"--callback {spec!r}: cannot import {name} ({exc})") from None
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))


def _module_from_file(path: Path, spec: str):
    if not path.is_file():
        raise UserError(f"--callback {spec!r}: {path} not found")
    unique = f"imgclass_user_callback_{abs(hash(str(path.resolve())))}"
    if unique in sys.modules:
        return sys.modules[unique]
    loaded = importlib.util.spec_from_file_location(unique, path)
    module = importlib.util.module_from_spec(loaded)
    sys.modules[unique] = module
    try:
        loaded.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: its error, named
        del sys.modules[unique]
        raise UserError(f"--callback {spec!r}: {path} failed to load: {type(exc).__name__}: {exc}") from None
    return module
