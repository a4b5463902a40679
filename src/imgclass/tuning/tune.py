"""`imgclass tune DATA --trials N`: hyperparameter search with Optuna, each trial a normal
`imgclass train` run (so every train option can be fixed), pruned per epoch on validation
accuracy. Studies live in any SQLAlchemy storage (SQLite by default, PostgreSQL for a shared
study): several processes on several machines can work on one study at once.

Outputs in --out: study.db (default storage), trials.csv, best.yaml (accepted by
`imgclass train --config`), figures/optimization_history.png and figures/param_importances.png.
"""
from __future__ import annotations

import inspect
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..training import config as config_mod
from ..data.split import folds
from ..core.errors import UserError
from ..core.figures import save_figure
from ..core.files import write_text_atomic
from ..training.loop.fit import Callback
from ..training.plan import RunPlan, plan_run
from ..training.integrations import tracking
from ..training.run import train

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")  # default: none for grid (every grid point runs to the end), median otherwise
GRID_POINTS = 3  # a float or int range becomes this many points for grid search


def default_space(plan: RunPlan) -> dict[str, dict[str, Any]]:
    """The default search space, around what train would use for this data (the same plan): learning rate
    (a decade either side of the plan's), weight decay, batch size, augmentation, dropout, head width
    (for models that take one) and input size (the plan's, and three quarters of it)."""
    img_size = plan.phases[-1][0]
    space = {
        "lr": {"type": "float", "low": plan.lr / 10, "high": plan.lr * 10, "log": True},
        "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
        "batch_size": {"type": "categorical", "choices": [64, 128, 256]},
        "augment": {"type": "categorical", "choices": ["none", "light", "strong"]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "head": {"type": "categorical", "choices": ["none", "128", "256"]},
        "img_size": {"type": "categorical", "choices": sorted({max(8, plan.spec.min_img_size,
                                                                   8 * round(img_size * 0.75 / 8)), img_size})},
    }
    if not takes_head(plan):
        del space["head"]
    return space


def takes_head(plan: RunPlan) -> bool:
    return "head" in inspect.signature(plan.spec.build).parameters


def check_space(space: dict[str, dict[str, Any]], plan: RunPlan) -> None:
    """Refuse, before the first trial, a space the plan's model cannot train: a head width for a model
    without a head, input sizes below the model's minimum."""
    if "head" in space and not takes_head(plan):
        raise UserError(f"the search space has 'head', but model '{plan.cfg.model}' takes no head widths; "
                        f"remove it from --space")
    sizes = space.get("img_size", {})
    low = min(sizes.get("choices", [sizes.get("low", plan.spec.min_img_size)]))
    if low < plan.spec.min_img_size:
        raise UserError(f"the search space's img_size goes down to {low}, but model '{plan.cfg.model}' needs at "
                        f"least {plan.spec.min_img_size}")


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    raw = config_mod.load_yaml(path)
    for key, spec in raw.items():
        if key.replace("-", "_") not in config_mod.FIELD_NAMES:
            raise UserError(config_mod.unknown_key_message(key, str(path)))
        if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
            raise UserError(f"{path}: '{key}' needs type float, int (with low/high[, log]) or categorical (with choices)")
        if spec["type"] == "categorical" and not spec.get("choices"):
            raise UserError(f"{path}: '{key}' needs a list of choices")
        if spec["type"] != "categorical" and ("low" not in spec or "high" not in spec):
            raise UserError(f"{path}: '{key}' needs low and high")
    return {k.replace("-", "_"): v for k, v in raw.items()}


def grid_of(space: dict[str, dict[str, Any]]) -> dict[str, list]:
    import numpy as np
    grid = {}
    for key, s in space.items():
        if s["type"] == "categorical":
            grid[key] = list(s["choices"])
        else:
            lo, hi = float(s["low"]), float(s["high"])
            pts = np.geomspace(lo, hi, GRID_POINTS) if s.get("log") else np.linspace(lo, hi, GRID_POINTS)
            grid[key] = sorted({int(round(p)) for p in pts}) if s["type"] == "int" else [float(p) for p in pts]
    return grid


def suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params = {}
    for key, s in space.items():
        if s["type"] == "categorical":
            params[key] = trial.suggest_categorical(key, list(s["choices"]))
        elif s["type"] == "int":
            params[key] = trial.suggest_int(key, int(s["low"]), int(s["high"]), log=bool(s.get("log")))
        else:
            params[key] = trial.suggest_float(key, float(s["low"]), float(s["high"]), log=bool(s.get("log")))
    if params.get("head") == "none":
        params["head"] = None
    return params


class PruneOnVal(Callback):
    """Training callback: report validation accuracy each epoch, stop the trial when Optuna prunes it."""
    order = 10

    def __init__(self, trial):
        self.trial = trial
        self.pruned = False

    def after_epoch(self, trainer) -> None:
        value = trainer.history[-1]["val_acc"]
        if not math.isnan(value):
            self.trial.report(value, trainer.epoch)
            if self.trial.should_prune():
                self.pruned = True
                trainer.stop, trainer.stop_reason = True, "pruned by Optuna"


@dataclass
class TuneResult:
    study_name: str
    storage: str
    best_value: float
    best_params: dict[str, Any]
    best_config: Path
    n_trials: int


def tune(data: str | Path, trials: int = 10, sampler: str = "tpe", space: str | Path | None = None,
         time_budget: str | None = None, storage: str | None = None, study: str | None = None,
         out: str | Path = "runs/tune", config: str | Path | None = None, pruner: str | None = None,
         cv: int | None = None, **fixed: Any) -> TuneResult:
    """pruner: median (stop a trial whose validation accuracy trails the median of earlier trials at the same
    epoch, or fold with cv) or none; cv: K-fold cross-validation inside the training split, a trial's score
    being the mean of its K folds' best validation accuracies (the spread goes in trials.csv)."""
    import optuna  # deferred on purpose: only the tune verb needs it, and it is slow to import
    if sampler not in SAMPLERS:
        raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}")
    pruner = pruner or ("none" if sampler == "grid" else "median")
    if pruner not in PRUNERS:
        raise UserError(f"--pruner must be one of {', '.join(PRUNERS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fixed = config_mod.explicit_values(config, data=str(data), **fixed)
    fixed.pop("out", None)
    # the plan train would make of these settings: its model, input size and lr centre the default space,
    # and a given space is checked against that model before the first trial
    plan = plan_run(**fixed)
    fold_splits = folds(plan.split, cv, plan.cfg.seed) if cv else None
    search = load_space(space) if space else default_space(plan)
    check_space(search, plan)
    search = {k: v for k, v in search.items() if k not in fixed}  # a fixed option is not searched
    if not search:
        raise UserError("nothing to search: every parameter of the space is fixed by an option")
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = study or "imgclass"
    st = _open_study(name, storage, sampler, pruner, search, fixed.get("seed", 101), bool(cv))

    def one_run(params, folder: Path, split=None, callbacks=()) -> float:
        run = train(out=str(folder), callbacks=list(callbacks), split=split,
                    **{**fixed, **params, "evaluate": False, "verbose": False, "tensorboard": False})
        best = max((r["val_acc"] for r in run.history if not math.isnan(r["val_acc"])), default=float("nan"))
        if math.isnan(best):
            raise UserError("tuning needs a validation split (val_split > 0 or a val/ folder)")
        return best

    def objective(trial) -> float:
        params = suggest(trial, search)
        folder = out / f"trial-{trial.number}"
        trial.set_user_attr("run", str(folder))
        if fold_splits is None:
            prune = PruneOnVal(trial)
            best = one_run(params, folder, callbacks=[prune])
            if prune.pruned:
                raise optuna.TrialPruned()
            return best
        scores = []
        for i, fold in enumerate(fold_splits):  # pruned between folds, on the mean so far
            scores.append(one_run(params, folder / f"fold-{i}", split=fold))
            trial.set_user_attr("fold_scores", scores)
            trial.report(sum(scores) / len(scores), i)
            if i < len(fold_splits) - 1 and trial.should_prune():
                raise optuna.TrialPruned()
        return sum(scores) / len(scores)

    seconds = config_mod.parse_duration(time_budget)
    with tracking.study(fixed.get("track"), name):  # --track: the trials nested in one run, or one group
        st.optimize(objective, n_trials=trials, timeout=seconds, catch=())
    done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise UserError("no trial completed")
    best = st.best_trial
    best_cfg = {**fixed, **{k: v for k, v in best.params.items()}}
    if best_cfg.get("head") == "none":
        best_cfg["head"] = None
    best_file = out / "best.yaml"
    # best.yaml is the next command's input (train --config): a kill leaves the old file or the new one
    write_text_atomic(best_file, yaml.safe_dump({k: v for k, v in best_cfg.items()}, sort_keys=False))
    _write_trials(st, out / "trials.csv")
    _figures(st, out / "figures")
    return TuneResult(name, storage, best.value, best.params, best_file, len(st.trials))


def _open_study(name: str, storage: str, sampler: str, pruner: str, search: dict, seed: int, cv: bool):
    """The study, created or joined; with cv the pruner compares the running mean after each fold."""
    import optuna
    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
                "random": lambda: optuna.samplers.RandomSampler(seed=seed),
                "grid": lambda: optuna.samplers.GridSampler(grid_of(search), seed=seed)}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="maximize",
                                   sampler=samplers[sampler](),
                                   pruner=optuna.pruners.MedianPruner(n_warmup_steps=0 if cv else 1)
                                   if pruner == "median" else optuna.pruners.NopPruner())
    except Exception as exc:  # noqa: BLE001 - a bad URL or unreachable database is the user's to fix
        raise UserError(f"cannot open study '{name}' in {storage}: {str(exc).splitlines()[0]}") from None


def _write_trials(study, path: Path) -> None:
    """trials.csv (optuna's trials_dataframe would need pandas just for this)."""
    import csv
    import io
    keys = sorted({k for t in study.trials for k in t.params})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", "value", "seconds", "run", "fold_scores", "fold_std"] + keys)
    for t in study.trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else ""
        scores = t.user_attrs.get("fold_scores") or []
        spread = statistics.pstdev(scores) if len(scores) > 1 else ""  # over the folds run (--cv)
        w.writerow([t.number, t.state.name.lower(), "" if t.value is None else t.value, seconds,
                    t.user_attrs.get("run", ""), ";".join(f"{s:.6g}" for s in scores), spread]
                   + [t.params.get(k, "") for k in keys])
    write_text_atomic(path, buf.getvalue())


def _figures(study, folder: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as vis
    folder.mkdir(parents=True, exist_ok=True)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        ax = vis.plot_optimization_history(study)
        save_figure(ax.figure, folder / "optimization_history.png", tight=True)
        plt.close(ax.figure)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
            try:
                ax = vis.plot_param_importances(study)
                save_figure(ax.figure, folder / "param_importances.png", tight=True)
                plt.close(ax.figure)
            except (RuntimeError, ValueError):
                pass  # importances need variation in both parameters and results


def summary_table(study_name: str, storage: str, top: int = 10) -> str:
    import optuna
    st = optuna.load_study(study_name=study_name, storage=storage)
    rows = sorted(st.trials, key=lambda t: (t.value is None, -(t.value or 0.0)))[:top]  # best first, unscored last
    keys = sorted({k for t in rows for k in t.params})
    lines = ["  ".join(["trial", "state", "value"] + keys)]
    for t in rows:
        lines.append("  ".join([str(t.number), t.state.name.lower(),
                                "-" if t.value is None else f"{t.value:.4f}"] +
                               [f"{t.params[k]:.3g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, "-"))
                                for k in keys]))
    return "\n".join(lines)
