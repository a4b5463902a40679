"""`imgclass train DATA --sweep lr=0.1,0.01,0.001`: one run per value of one setting, everything else the
same (so the split too), then the comparison and its written summary. No Optuna: the course's "try these
three values" in one command."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..training import config as config_mod
from ..core.errors import UserError


@dataclass
class Sweep:
    setting: str
    runs: list            # training.run.Run, one per value, in the order given
    comparison: Any       # evaluation.compare.Comparison
    summary: Path         # the folder of report.md / report.html


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """"lr=0.1,0.01" -> ("lr", ["0.1", "0.01"]); values that hold commas themselves (img_size "150,299")
    are separated by semicolons instead: "img_size=128;150,299"."""
    key, sep, values = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key or not values.strip():
        raise UserError(f"--sweep takes SETTING=V1,V2,... (e.g. lr=0.1,0.01,0.001), not {text!r}")
    parts = [v.strip() for v in values.split(";" if ";" in values else ",")]
    if len(parts) < 2 or not all(parts):
        raise UserError(f"--sweep {key}: give at least two non-empty values")
    if len(set(parts)) != len(parts):
        raise UserError(f"--sweep {key}: a value is repeated")
    return key, parts


def sweep(data: str | Path | None, setting: str, values: list[Any], out: str | Path | None = None,
          config: str | Path | None = None, **options: Any) -> Sweep:
    from ..evaluation.compare import compare_rows
    from ..evaluation.summary import write_summary
    from ..training.integrations import tracking
    from ..training.run import train
    if setting not in config_mod.FIELD_NAMES or setting in ("data", "out"):
        raise UserError(config_mod.unknown_key_message(setting, "--sweep") if setting not in config_mod.FIELD_NAMES
                        else f"--sweep cannot vary {setting}")
    if setting in options:
        raise UserError(f"{setting} is swept; do not also set it")
    for v in values:  # every value checked before the first run starts, not found bad an hour in
        config_mod.explicit_values(config, data=str(data) if data is not None else None, **{**options, setting: v})
    base = Path(out or f"runs/sweep-{setting}").expanduser()
    track = config_mod.explicit_values(config, data=None, **options).get("track")
    with tracking.study(track, base.name):  # --track: the runs nested in one MLflow run, or one W&B group
        runs = [train(data, config=config, out=str(base / f"{setting}={str(v).replace('/', '_')}"),
                      **{**options, setting: v}) for v in values]
    rows = compare_rows([r.dir for r in runs])
    return Sweep(setting, runs, rows, write_summary(rows, base / "summary"))
