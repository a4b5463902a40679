"""Which engine scores images for predict, evaluate, submit and serve: eager PyTorch in float32, PyTorch under
bf16 autocast, ONNX Runtime on the exported graph, or OpenVINO on its IR (the openvino extra), each in float32
or, where an int8 export kept its accuracy, int8. `choose_runtime` decides and returns the engine with the
line that states the choice (the caller hands it to its Predictor); it can be forced (`--runtime
torch|onnx|openvino`, `--precision float32|bf16`).

`auto`, on a CPU:
- ONNX Runtime is tried when the work pays for one export: a service, or a job of AUTO_ONNX_IMAGES images or
  more. The export is parity-checked as `export` does and kept in this user's runtime cache
  (RUNTIME_CACHE/<model file's SHA-256>/model.onnx); then each candidate is timed on the run's own test images
  and the fastest wins. The timings and the bf16 check are kept there too (runtime.json, per machine), so later
  commands reuse the choice without timing or checking again.
- bf16 autocast is a candidate only where the CPU computes bf16 natively (AVX512-BF16 or AMX) and its
  probabilities stay within BF16_TOLERANCE of float32 with the same top class on every one of those images.
- OpenVINO float32 is a candidate beside ONNX Runtime where the openvino extra is installed (its conversion
  from the cached ONNX graph takes a second or two).
- int8 (ONNX Runtime, and OpenVINO where installed) is a candidate once a job of AUTO_INT8_IMAGES images or more,
  its model in its run folder with its data, has made it: `export --quantize int8` into the cache, kept only if
  the test accuracy drops by at most MAX_ACCURACY_DROP points; a refusal is remembered (runtime.json), so it is
  not tried again for that model file. Services use the int8 exports found there but do not make them (a service
  starts in seconds; quantizing and checking take a minute or more).
Nothing is written beside the model (its folder may be read-only, or another user's), and no ONNX graph found
on disk is run unless imgclass wrote it into this cache (a folder of this user's alone, mode 0700) or the user
named the .onnx file: whoever can write a model's folder does not choose the graph every command runs.
Evidence (machine A, 2 cores, EfficientNet-Lite0 at 224 px, batch 8, 2026-11-23): float32 71 images/s,
bf16 122, ONNX Runtime 150; bf16 probabilities within 0.024 of float32, ONNX within 6e-7. The one-off ONNX
export of that model takes 12 s, which is why small jobs stay in PyTorch unless they find the export made.
On a GPU: PyTorch with bf16 autocast (float32 with --precision float32).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core import log
from ..core.errors import UserError
from ..core.extras import available
from ..core.files import private_folder, write_text_atomic
from ..models.modelfile import (INT8_KEY, SOURCE_KEY, export_metadata, file_sha256, is_openvino_export,
                                resolve_model_path)
from ..models.inference import cpu_has_native_bf16, cpu_info, cpu_label
from .engines import Engine, OnnxEngine, OpenVinoEngine, images_per_second
from .predictor import Predictor
from .defaults import PRECISIONS, RUNTIMES

BF16_TOLERANCE = 0.05    # max |probability difference| bf16 autocast may show against float32 (and no top class
#                          may change) on the run's test images; measured 0.018-0.024 on Lite0 at 224 px
AUTO_ONNX_IMAGES = 1000  # with --runtime auto a job this large is worth the one-off export (Lite0: 12 s, paid back
#                          after ~1,100 images at the measured 71 -> 150 images/s)
AUTO_INT8_IMAGES = 20_000  # ... and int8 candidates for jobs this large (their one-off quantization and accuracy
#                           check cost a minute or more: calibration, then the test split scored twice)
INT8_KINDS = ("onnx int8", "openvino int8")  # the int8 candidates auto may make (tests narrow it)
TIMING_SECONDS = 0.3     # each candidate is timed for at least this long per round on the parity images ...
TIMING_ROUNDS = 3        # ... in this many interleaved rounds; its best pass counts (2 cores shared with other
#                          work measured Lite0 float32 at anywhere from 22 to 63 images/s in single 0.5 s runs)
RUNTIME_CACHE_ENV = "IMGCLASS_RUNTIME_CACHE"  # overrides the cache's folder (default below)


@dataclass(frozen=True)
class RuntimeChoice:
    """What scores images, and the line that says why (logged, and shown by the service's /info)."""
    engine: Engine
    note: str


def runtime_cache_root() -> Path:
    """$IMGCLASS_RUNTIME_CACHE, else $XDG_CACHE_HOME/imgclass/runtime, else ~/.cache/imgclass/runtime."""
    if os.environ.get(RUNTIME_CACHE_ENV):
        return Path(os.environ[RUNTIME_CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgclass" / "runtime"


def private_dir(digest: str) -> Path | None:
    """This model file's folder in the runtime cache (made mode 0700), or None when it cannot be made or is not
    this user's alone, it or any folder above it (core.files.private_folder): then nothing is read from it or
    kept."""
    path = runtime_cache_root() / digest
    return path if private_folder(path) else None


def machine_key() -> str:
    """The machine a timing belongs to: processor and the threads torch uses."""
    return f"{cpu_info()[0]}, {torch.get_num_threads()} threads"


def bf16_parity(predictor: Predictor, images: torch.Tensor) -> tuple[bool, float]:
    """Whether bf16 autocast answers like float32 on these images: (within tolerance, max |difference|)."""
    reference = predictor.torch_engine(bf16=False)(images)
    got = predictor.torch_engine(bf16=True)(images)
    diff = float((got - reference).abs().max()) / predictor.task.answer_scale if len(images) else 0.0
    same_top = bool((got.argmax(1) == reference.argmax(1)).all())
    return diff <= BF16_TOLERANCE and same_top, diff


# each export auto may run, and its name in the model file's runtime-cache folder
CACHE_NAMES = {"onnx float32": "model.onnx", "openvino float32": "openvino",
               "onnx int8": "model.int8.onnx", "openvino int8": "openvino_int8"}


def _make_export(kind: str, model_path: Path, target: Path) -> Path:
    """Export one kind (a CACHE_NAMES key) of this model to target, checked as `export` checks it."""
    if kind == "onnx float32":
        from .graph import export_model
        return export_model(model_path, "onnx", target)[0]
    if kind == "openvino float32":
        from .openvino import export_ir
        return export_ir(model_path, target)[0]
    from .quantize import export_int8
    return export_int8(model_path, kind.split()[0], target)[0]


def _is_export_of(target: Path, digest: str) -> bool:
    return target.exists() and export_metadata(target, SOURCE_KEY) == digest


def cached_export(kind: str, model_path: Path, digest: str, folder: Path | None, make: bool) -> Path | None:
    """The export of this very model file (SHA-256 `digest`) in its runtime-cache folder, exported there when
    `make`. None when absent and not made, or when there is no private folder (see export_engine)."""
    if folder is None:
        return None
    target = folder / CACHE_NAMES[kind]
    if target.exists():
        try:
            if _is_export_of(target, digest):
                return target
        except Exception as exc:  # noqa: BLE001 - a damaged file (a disk error, a crash elsewhere): not an export
            log.warning(f"the cached export {target} is unreadable ({type(exc).__name__}): "
                        + ("exporting it again" if make else "not used"))
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    if not make:
        return None
    try:
        return _make_export(kind, model_path, target)
    except UserError:
        if _is_export_of(target, digest):  # a folder export another process (a service's worker) made meanwhile
            return target
        raise


def _engine_of(kind: str, path: Path, predictor: Predictor, precision: str | None = None) -> Engine:
    """The engine of an export of one kind; precision: OpenVINO's arithmetic if not the kind's own (bf16)."""
    runtime, exported = kind.split()
    precision = precision or exported
    if runtime == "onnx":
        return OnnxEngine(path, predictor.pre.img_size, precision=precision)
    return OpenVinoEngine(path, predictor.pre.img_size, precision)


def export_engine(kind: str, predictor: Predictor, model_path: Path, precision: str | None = None) -> Engine:
    """An export's engine (ONNX Runtime or OpenVINO): from the runtime cache, or (no private cache folder) exported
    into a temporary folder that is removed as soon as the runtime has read it."""
    digest = file_sha256(model_path)
    path = cached_export(kind, model_path, digest, private_dir(digest), make=True)
    if path is not None:
        return _engine_of(kind, path, predictor, precision)
    with tempfile.TemporaryDirectory(prefix="imgclass-export-") as tmp:
        return _engine_of(kind, _make_export(kind, model_path, Path(tmp) / CACHE_NAMES[kind]), predictor, precision)


def chosen_kind(engine: Engine) -> str:
    """An engine (a choice put to work) as a kind another process can rebuild with `load_chosen`: "torch
    float32|bf16", "onnx float32|int8", "openvino float32|bf16|int8"."""
    return f"{engine.runtime} {engine.precision}"


def load_chosen(model_path: str | Path, kind: str, max_pixels: int | None = None, with_model: bool = False
                ) -> Predictor:
    """A Predictor running the engine `choose_runtime` chose in another process (`chosen_kind`), without choosing
    or timing again. For an export: the export's own Predictor, from this machine's runtime cache (made there if
    absent, as on another node of a cluster); it has no PyTorch model, so timm is not even imported (3 of the 5 s
    a Ray actor took to start on machine A). with_model: the model file's Predictor with that engine (a k-NN
    rejection rule needs the backbone). An exported file given as the model runs as it is."""
    exported = Path(model_path).suffix == ".onnx" or is_openvino_export(model_path)
    model_path = Path(model_path) if exported else resolve_model_path(model_path)
    runtime, precision = kind.split()
    export_kind = kind if kind in CACHE_NAMES else f"{runtime} float32"  # openvino bf16: the float32 IR in bf16
    note = f"runtime: {kind} (chosen by the process that started this one)"
    if with_model or runtime == "torch" or exported:
        predictor = Predictor.load(model_path, "cpu", max_pixels)
        if predictor.model is None:  # an exported file: its own runtime
            return predictor
        engine = (predictor.torch_engine(bf16=precision == "bf16") if runtime == "torch"
                  else export_engine(export_kind, predictor, model_path, precision))
        predictor.use(RuntimeChoice(engine, note))
        return predictor
    digest = file_sha256(model_path)
    path = cached_export(export_kind, model_path, digest, private_dir(digest), make=True)
    if path is None:  # no private runtime cache here: exported into a temporary folder for the model's Predictor
        return load_chosen(model_path, kind, max_pixels, with_model=True)
    predictor = Predictor.load(path, "cpu", max_pixels)
    if precision != predictor.engine.precision:
        predictor.use(RuntimeChoice(OpenVinoEngine(path, predictor.pre.img_size, precision), note))
    return predictor


def _read_saved(folder: Path | None) -> dict:
    """runtime.json: what was measured for this model file, per machine ({} when nothing was, or no folder)."""
    if folder is None:
        return {}
    try:
        saved = json.loads((folder / "runtime.json").read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _write_saved(folder: Path | None, saved: dict) -> None:
    if folder is None:
        return
    try:
        write_text_atomic(folder / "runtime.json", json.dumps(saved, indent=2) + "\n")
    except OSError:
        pass  # a full disk: measured again next time


def _bf16_candidate(predictor: Predictor, model_path: Path, folder: Path | None, saved: dict,
                    images: torch.Tensor | None = None) -> bool:
    """Whether bf16 autocast may run: the CPU has it natively and its answers are within tolerance, checked
    once and kept in the cache's runtime.json (`saved`), so a one-image predict need not redo it."""
    if not cpu_has_native_bf16():
        return False
    entry = saved.setdefault(machine_key(), {})
    if "bf16_ok" not in entry:
        from .graph import parity_batch
        images = parity_batch(predictor, model_path) if images is None else images
        entry["bf16_ok"], entry["bf16_max_diff"] = bf16_parity(predictor, images)
        _write_saved(folder, saved)
    return entry["bf16_ok"]


def _int8_exports(model_path: Path, digest: str, folder: Path | None, saved: dict, make: bool) -> dict[str, Path]:
    """The int8 exports in the cache whose accuracy check passed (made there when `make`). A refusal (accuracy
    lost, no run folder or data to check on) is remembered in runtime.json and not tried again."""
    refused, found = saved.setdefault("int8_refused", {}), {}
    for kind in INT8_KINDS:
        if kind in refused or (kind.startswith("openvino") and not available("openvino")):
            continue
        try:
            path = cached_export(kind, model_path, digest, folder, make)
        except UserError as exc:
            refused[kind] = str(exc)
            _write_saved(folder, saved)
            log.info(f"runtime: {kind} is not a candidate: {exc}")
            continue
        from .quantize import Int8Report
        report = Int8Report.from_json(export_metadata(path, INT8_KEY)) if path is not None else None
        if report is not None and report.passed and report.weight_bits == 8 and report.cpu != cpu_label():
            # a runtime cache shared between machines (a network home): checked on another CPU kind, not here
            log.info(f"runtime: {kind} was checked on {report.cpu}, not on this {cpu_label()}: not a candidate")
            continue
        if report is not None and report.passed:
            found[kind] = path
    return found


def _measure(predictor: Predictor, model_path: Path, engines: dict[str, Engine]) -> dict[str, float]:
    """images/s of each candidate on the run's test images."""
    from .graph import parity_batch
    images = parity_batch(predictor, model_path)
    rates = dict.fromkeys(engines, 0.0)
    for _ in range(TIMING_ROUNDS):  # interleaved, so a burst of load elsewhere does not favour one candidate
        for name, engine in engines.items():
            rates[name] = max(rates[name], round(images_per_second(engine, images, TIMING_SECONDS), 1))
    return rates


def _candidates(predictor: Predictor, model_path: Path, images: int | None, digest: str, folder: Path | None,
                saved: dict) -> dict[str, Path | None]:
    """auto's candidates on a CPU: name -> its export in the cache (None for PyTorch); {} when ONNX Runtime is not
    tried (a small job with no export made yet, or no private cache)."""
    onnx_path = cached_export("onnx float32", model_path, digest, folder,
                              make=images is None or images >= AUTO_ONNX_IMAGES)
    if onnx_path is None:
        return {}
    found: dict[str, Path | None] = {"onnx float32": onnx_path, "torch float32": None}
    if _bf16_candidate(predictor, model_path, folder, saved):
        found["torch bf16"] = None
    if available("openvino"):
        found["openvino float32"] = cached_export("openvino float32", model_path, digest, folder, make=True)
    # int8 is made for large jobs only: a service starts in seconds, and uses the int8 exports such a job made
    found.update(_int8_exports(model_path, digest, folder, saved,
                               make=images is not None and images >= AUTO_INT8_IMAGES))
    return found


def _auto_cpu(predictor: Predictor, model_path: Path, images: int | None) -> tuple[Engine, str]:
    """--runtime auto on a CPU: (the engine, why)."""
    digest = file_sha256(model_path)
    folder = private_dir(digest)
    saved = _read_saved(folder)
    candidates = _candidates(predictor, model_path, images, digest, folder, saved)
    if not candidates:
        engine, note = _torch_auto_precision(predictor, model_path, folder, saved)
        why = (f"ONNX Runtime is tried for services and jobs of {AUTO_ONNX_IMAGES}+ images" if folder is not None
               else f"ONNX Runtime is not tried: no private runtime cache at {runtime_cache_root()}")
        return engine, f"{note}; {why} (--runtime onnx forces it)"

    def engine_of(name: str) -> Engine:
        path = candidates[name]
        return predictor.torch_engine(bf16=name.endswith("bf16")) if path is None else _engine_of(name, path, predictor)
    entry = saved.setdefault(machine_key(), {})
    if set(entry.get("images_per_second", {})) != set(candidates):  # first time, or the candidates changed
        entry["images_per_second"] = _measure(predictor, model_path, {name: engine_of(name) for name in candidates})
        _write_saved(folder, saved)
    rates = entry["images_per_second"]
    best = max(rates, key=rates.get)
    measured = ", ".join(f"{name} {rate:g}" for name, rate in sorted(rates.items(), key=lambda kv: -kv[1]))
    return engine_of(best), f"{best} (fastest measured on this machine, images/s: {measured})"


def _torch_auto_precision(predictor: Predictor, model_path: Path, folder: Path | None, saved: dict
                          ) -> tuple[Engine, str]:
    """PyTorch on a CPU without timing: bf16 where the CPU has it natively and parity holds."""
    bf16 = _bf16_candidate(predictor, model_path, folder, saved)
    entry = saved.get(machine_key(), {})
    if not cpu_has_native_bf16():
        reason = "this CPU has no native bf16"
    elif bf16:
        reason = f"native bf16, within {entry['bf16_max_diff']:.3f} of float32 (tolerance {BF16_TOLERANCE})"
    else:
        reason = f"bf16 differs from float32 by {entry['bf16_max_diff']:.3f} or changes a top class: float32 kept"
    return predictor.torch_engine(bf16=bf16), f"torch {'bf16' if bf16 else 'float32'} ({reason})"


def choose_runtime(predictor: Predictor, runtime: str = "auto", precision: str = "auto",
                   images: int | None = None) -> RuntimeChoice:
    """The engine for a job of `images` images (None: a service, which runs for long) and the line that states
    the choice (logged). The predictor is not changed: `predictor.use(choice)` puts the engine to work."""
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime must be one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}")
    if predictor.path is None:
        raise UserError("choose_runtime needs a Predictor loaded from a model file (Predictor.load)")
    model_path = predictor.path
    if predictor.model is None:  # an exported file runs in its own runtime
        engine = predictor.engine
        names = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}
        if runtime not in ("auto", engine.runtime):
            raise UserError(f"{model_path} is an {'ONNX' if engine.runtime == 'onnx' else 'OpenVINO'} export: it "
                            f"runs in {names[engine.runtime]} (give the model file for {runtime})")
        if precision == "bf16":
            raise UserError(f"--precision bf16 runs in PyTorch; {names[engine.runtime]} runs the export as exported")
        note = f"{engine.runtime} {engine.precision} (the exported file: {engine.path})"
    elif runtime in ("onnx", "openvino"):
        if precision == "bf16" and (runtime == "onnx" or not cpu_has_native_bf16()):
            raise UserError("--precision bf16 runs in PyTorch, or in OpenVINO on a CPU with native bf16; "
                            "ONNX Runtime runs the export in float32")
        # --precision bf16: OpenVINO's CPU plugin computes the same IR in bf16
        engine = export_engine(f"{runtime} float32", predictor, model_path, "bf16" if precision == "bf16" else None)
        note = f"{runtime} {engine.precision} (asked: {engine.path})"
    elif predictor.device.type != "cpu" or precision != "auto":  # a GPU, or a precision asked for: PyTorch
        bf16 = precision == "bf16" or (precision == "auto" and predictor.device.type == "cuda")
        if precision == "bf16" and predictor.device.type == "cpu" and not cpu_has_native_bf16():
            raise UserError("--precision bf16: this CPU has no native bf16 (it would run slower than float32)")
        engine = predictor.torch_engine(bf16=bf16)
        note = f"torch {engine.precision} ({'asked' if precision != 'auto' else predictor.device.type})"
    elif runtime == "torch":
        folder = private_dir(file_sha256(model_path))
        engine, note = _torch_auto_precision(predictor, model_path, folder, _read_saved(folder))
    else:
        engine, note = _auto_cpu(predictor, model_path, images)
    choice = RuntimeChoice(engine, f"runtime: {note}")
    log.info(choice.note)
    return choice
