"""int8 exports that keep their accuracy: `export --format onnx|openvino --quantize int8`.

Static quantization with each ecosystem's own tool: ONNX Runtime's `quantize_static` (QDQ, weights per
channel) and OpenVINO's NNCF `nncf.quantize`, both calibrated on the run's training images. Then the run's
test split (val when it has none) is scored by the float and the int8 model in the same run, and the int8 file
is refused when its score (accuracy; mAP for several tags) drops by more than `max_drop` points. The report
(both scores, sizes and images/s at batch 16, with the CPU named) is printed, stored in the file's metadata,
and read by the runtime choice, which only ever runs an int8 file whose check passed.

Quantization runs in a child process of its own (`export_int8`; the work itself is `export_int8_here`): with NNCF's
and ONNX Runtime's quantization loaded, a long process died by SIGSEGV later, as it next started a child process
(three runs of the test suite, 2026-12-02; the cause inside those libraries is unknown). A user's notebook that
quantizes and then starts a service, DDP or Ray never loads them. IN_PROCESS_ENV=1 keeps the work in the calling
process (debugging; tests that stand in for a quantizer).

The head's output and everything after it (temperature, TTA averaging, softmax) stay float in the ONNX graph:
quantized probabilities came out in steps of 1/255 (machine A, Lite0 at 96 px), which calibration and the
decision thresholds cannot live with.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..data.split import read_splits
from ..core.errors import UserError
from ..core.extras import require
from ..core.files import building_folder, staged_file
from ..models.modelfile import INT8_KEY, META_KEY, SOURCE_KEY, file_sha256, openvino_module
from ..models.inference import cpu_label
from ..core.rundir import RunDir
from .engines import OnnxEngine, images_per_second
from .graph import default_export_path, export_model, parity_reference
from .defaults import CALIBRATION_IMAGES, MAX_ACCURACY_DROP
from .predictor import Predictor

SCORING_BATCH = 64        # test images decoded and scored at once by both models (memory stays flat)
TIMING_SECONDS = 1.0      # each model timed at batch 16 for this long, in 3 interleaved rounds


@dataclass(frozen=True)
class Int8Report:
    """The float and the int8 model side by side, measured in the same run on this machine."""
    runtime: str            # onnx | openvino
    split: str              # the split scored (test; val when the run has no test images)
    images: int             # its images that could be read
    score_name: str         # accuracy, or mAP for several tags
    float_score: float
    int8_score: float
    float_bytes: int        # file sizes
    int8_bytes: int
    float_images_per_second: float  # at batch 16 on `cpu`
    int8_images_per_second: float
    cpu: str
    max_drop: float         # points allowed
    weight_bits: int = 8    # 7: holds on every x86 CPU; 8: as checked on `cpu` (a CPU without VNNI may lose more)

    @property
    def drop(self) -> float:
        """Points of score lost (negative: int8 scored higher)."""
        return (self.float_score - self.int8_score) * 100

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop

    def lines(self) -> list[str]:
        speedup = self.int8_images_per_second / max(self.float_images_per_second, 1e-9)
        return [f"int8 ({self.runtime}): {self.split} {self.score_name} {self.float_score:.4f} -> "
                f"{self.int8_score:.4f} on {self.images} images ({-self.drop:+.2f} points; allowed -{self.max_drop:g})",
                f"size: {self.float_bytes / 1e6:.1f} MB -> {self.int8_bytes / 1e6:.1f} MB",
                f"images/s at batch 16 on {self.cpu}: {self.float_images_per_second:.0f} -> "
                f"{self.int8_images_per_second:.0f} ({speedup:.2f}x)",
                "weights: 7-bit (the same answers on every x86 CPU)" if self.weight_bits == 7 else
                "weights: 8-bit (7-bit lost too much here; checked on this CPU: one without VNNI may lose more)"]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str | None) -> "Int8Report | None":
        try:
            return cls(**json.loads(text)) if text else None
        except (TypeError, ValueError):
            return None


def run_split(predictor: Predictor, model_path: Path, split: str) -> tuple[Path, list[tuple[str, object]]]:
    """(the data folder, the (path, label) rows of one of the run's splits): what int8 is calibrated and checked
    on. A model file outside its run folder has no such images: refused, with the reason."""
    run = RunDir.of_model(model_path)
    if run is None or not run.splits.is_file():
        raise UserError(f"--quantize int8 calibrates on the run's training images and checks its test images: "
                        f"{model_path} is not inside its run folder")
    root = run.data_root() or Path("")
    saved = read_splits(run.splits, root, list(predictor.classes), predictor.task.label_kind)
    return root, saved.items.get(split, [])


def decoded(predictor: Predictor, root: Path, rows, batch: int = SCORING_BATCH
            ) -> Iterator[tuple[torch.Tensor, list]]:
    """(uint8 N x 3 x S x S images, their labels) in batches; files gone or unreadable since training are left
    out with their labels."""
    for start in range(0, len(rows), batch):
        images, labels = [], []
        for path, label in rows[start:start + batch]:
            image = predictor.decode(root / path)
            if not isinstance(image, str):
                images.append(image)
                labels.append(label)
        if images:
            yield torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), labels


def calibration_images(predictor: Predictor, model_path: Path, n: int) -> torch.Tensor:
    """Up to n training images (a fixed random sample), uint8 N x 3 x S x S."""
    root, rows = run_split(predictor, model_path, "train")
    rows = random.Random(0).sample(rows, min(n, len(rows)))
    batches = [images for images, _ in decoded(predictor, root, rows)]
    if not batches:
        raise UserError("--quantize int8: none of the run's training images can be read to calibrate on")
    return torch.cat(batches)


def scores(predictor: Predictor, model_path: Path, engines: dict) -> tuple[str, int, dict[str, float]]:
    """(split, images, each engine's score on it): the run's test split, or val when it has no test images."""
    root, rows = run_split(predictor, model_path, "test")
    split = "test"
    if not rows:
        root, rows = run_split(predictor, model_path, "val")
        split = "val"
    probs = {name: [] for name in engines}
    labels = []
    for images, batch_labels in decoded(predictor, root, rows):
        labels.extend(batch_labels)
        for name, engine in engines.items():
            probs[name].append(engine(images).numpy())
    if not labels:
        raise UserError("--quantize int8: the run has no readable test or validation images to check accuracy on")
    truth = np.asarray(labels)
    return split, len(labels), {name: predictor.task.probability_score(np.concatenate(p), truth)
                                for name, p in probs.items()}


def _after_head(graph) -> list[str]:
    """Names of the nodes downstream of the graph's last Gemm or MatMul (the classifier head): temperature, TTA
    averaging and the probabilities, kept float."""
    heads = [n for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    if not heads:
        return []
    live, names = set(heads[-1].output), []
    for node in graph.node:  # ONNX nodes are in topological order
        if live & set(node.input):
            live |= set(node.output)
            names.append(node.name)
    return names


def quantize_onnx(float_onnx: Path, out: Path, calibration: torch.Tensor, seven_bit: bool = True) -> None:
    """ONNX Runtime's static quantization (QDQ, int8 weights per channel, uint8 activations) of the float graph."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i:i + 16].float().numpy() for i in range(0, len(calibration), 16))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"pixels": batch}

    prepared = out.with_name(out.stem + ".prepared.onnx")
    quant_pre_process(str(float_onnx), str(prepared))  # shape inference and graph optimisation, as ORT advises
    exclude = _after_head(onnx.load(str(prepared)).graph)
    # MinMax keeps every batch's activations until told to reduce them: 300 images of Lite0 at 224 px would
    # hold gigabytes; reduced every 4 batches, memory stays flat
    # seven_bit (ONNX Runtime's reduce_range): on x86 CPUs without VNNI the u8 x s8 products are summed in pairs
    # into 16 bits (vpmaddubsw), which saturates with full-range weights: a Lite0 clothing model quantized on a VNNI
    # machine lost 3.23 test points on an AMD EPYC without it (issue 40). With 7 bits (|w| <= 64) a pair cannot
    # overflow, so the check made here holds on every x86 CPU; but it costs accuracy of its own (hymenoptera's Lite0:
    # 8.3 points of 24 test images against none at 8 bits, machine A, 2026-12-07): export_int8 tries 7 bits first
    # and keeps 8 only when 7 fail the check.
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=seven_bit, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude, extra_options={"CalibMaxIntermediateOutputs": 4})


def quantize_openvino(float_model, calibration: torch.Tensor, seven_bit: bool = True):
    """NNCF's post-training quantization of an OpenVINO model (one image per calibration item, as NNCF's
    statistics expect)."""
    nncf = require("nncf", "openvino", "OpenVINO int8 (NNCF)")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    items = [calibration[i:i + 1].float().numpy() for i in range(len(calibration))]
    # seven_bit: overflow_fix on every layer (NNCF's default: the first only), the same 7-bit weights as ONNX's
    # reduce_range above (OpenVINO's "Saturation (overflow) issue workaround")
    fix = OverflowFix.ENABLE if seven_bit else OverflowFix.FIRST_LAYER
    return nncf.quantize(float_model, nncf.Dataset(items), subset_size=len(items),
                         advanced_parameters=AdvancedQuantizationParameters(overflow_fix=fix))


def _timed(engines: dict, images: torch.Tensor) -> dict[str, float]:
    rates = dict.fromkeys(engines, 0.0)
    for _ in range(3):  # interleaved, so a burst of load elsewhere does not favour one model
        for name, engine in engines.items():
            rates[name] = max(rates[name], images_per_second(engine, images, TIMING_SECONDS / 3))
    return rates


def _report(fmt: str, predictor: Predictor, model_path: Path, engines: dict, sizes: dict, batch: torch.Tensor,
            max_drop: float, bits: int) -> Int8Report:
    split, n, score = scores(predictor, model_path, engines)
    rates = _timed(engines, batch)
    return Int8Report(fmt, split, n, predictor.task.score_name, score["float"], score["int8"], sizes["float"],
                      sizes["int8"], round(rates["float"], 1), round(rates["int8"], 1), cpu_label(), max_drop, bits)


def _seven_else_eight(candidate):
    """candidate(bits) -> (the int8 model, its report): 7-bit weights when they pass the check (the same answers on
    every x86 CPU), else 8-bit when they do (checked on this CPU); else the refusal, with the smaller drop's report."""
    seven = candidate(7)
    if seven[1].passed:
        return seven
    eight = candidate(8)
    if not eight[1].passed:
        _refuse_or_keep(min(seven, eight, key=lambda made: made[1].drop)[1])
    return eight


def _refuse_or_keep(report: Int8Report) -> None:
    if not report.passed:
        raise UserError(f"int8 export refused: {report.split} {report.score_name} fell by {report.drop:.2f} points "
                        f"(--max-accuracy-drop {report.max_drop:g}); nothing was written. " + "; ".join(report.lines()))


IN_PROCESS_ENV = "IMGCLASS_INT8_IN_PROCESS"


def export_int8(model: str | Path, fmt: str = "onnx", out: str | Path | None = None,
                max_drop: float = MAX_ACCURACY_DROP, calibration: int = CALIBRATION_IMAGES
                ) -> tuple[Path, Int8Report]:
    """An int8 ONNX file or OpenVINO folder, written only when its score is within max_drop points of the float
    model's; returns (path, the report). The work runs in a child process (see the module's docstring); its
    messages show on this process's stderr, a refusal is the same UserError."""
    if os.environ.get(IN_PROCESS_ENV) == "1":
        return export_int8_here(model, fmt, out, max_drop, calibration)
    args = [str(Path(model).expanduser()), fmt, "" if out is None else str(Path(out).expanduser()), repr(max_drop),
            str(calibration)]
    done = subprocess.run([sys.executable, "-m", "imgclass.inference.quantize", *args], stdout=subprocess.PIPE,
                          text=True)
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    except ValueError:
        answer = {}
    if "error" in answer:
        raise UserError(answer["error"])
    if done.returncode != 0 or "path" not in answer:
        raise UserError(f"the int8 export failed in its process (exit code {done.returncode}); its messages are above")
    return Path(answer["path"]), Int8Report(**answer["report"])


def _child(argv: list[str]) -> int:
    """The child process of export_int8: the work, then one JSON line on stdout (the path and the report, or the
    error)."""
    model, fmt, out, max_drop, calibration = argv
    try:
        path, report = export_int8_here(model, fmt, out or None, float(max_drop), int(calibration))
    except UserError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps({"path": str(path), "report": report.to_dict()}))
    return 0


def export_int8_here(model: str | Path, fmt: str = "onnx", out: str | Path | None = None,
                     max_drop: float = MAX_ACCURACY_DROP, calibration: int = CALIBRATION_IMAGES
                     ) -> tuple[Path, Int8Report]:
    """export_int8's work, in this process."""
    if fmt not in ("onnx", "openvino"):
        raise UserError("--quantize int8 is for --format onnx or openvino")
    if fmt == "openvino":  # the one-line error before any work
        openvino_module()
        require("nncf", "openvino", "OpenVINO int8 (NNCF)")
    reference = parity_reference(model)
    model_path, predictor, batch, _ = reference
    calib = calibration_images(predictor, model_path, calibration)  # refuses a model outside its run first
    suffix = ".int8.onnx" if fmt == "onnx" else "_openvino_int8"
    out = Path(out).expanduser() if out else default_export_path(model_path, suffix)
    with tempfile.TemporaryDirectory(prefix="imgclass-int8-") as tmp:
        float_onnx, _ = export_model(model_path, "onnx", Path(tmp) / "float.onnx", reference)
        if fmt == "onnx":
            return _onnx_int8(predictor, model_path, float_onnx, Path(tmp), calib, batch, out, max_drop)
        return _openvino_int8(predictor, model_path, float_onnx, Path(tmp), calib, batch, out, max_drop)


def _onnx_int8(predictor, model_path, float_onnx, tmp, calib, batch, out, max_drop) -> tuple[Path, Int8Report]:
    import onnx
    size = predictor.pre.img_size

    def candidate(bits: int) -> tuple[Path, Int8Report]:
        int8_path = tmp / f"int8_{bits}.onnx"
        quantize_onnx(float_onnx, int8_path, calib, seven_bit=bits == 7)
        engines = {"float": OnnxEngine(float_onnx, size), "int8": OnnxEngine(int8_path, size)}
        sizes = {"float": float_onnx.stat().st_size, "int8": int8_path.stat().st_size}
        return int8_path, _report("onnx", predictor, model_path, engines, sizes, batch, max_drop, bits)
    int8_path, report = _seven_else_eight(candidate)
    graph = onnx.load(str(int8_path))
    del graph.metadata_props[:]  # quantize_static's copy of the float graph's, replaced whole below
    for key, value in ((META_KEY, predictor.header.to_json()), (SOURCE_KEY, file_sha256(model_path)),
                       (INT8_KEY, json.dumps(report.to_dict()))):
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    with staged_file(out) as staged:
        onnx.save(graph, str(staged))
    return out, report


def _openvino_int8(predictor, model_path, float_onnx, tmp, calib, batch, out, max_drop
                   ) -> tuple[Path, Int8Report]:
    from .openvino import OpenVinoEngine, convert, openvino, save_ir
    ov = openvino()
    header, digest, size = predictor.header.to_json(), file_sha256(model_path), predictor.pre.img_size
    float_model = convert(float_onnx)

    def candidate(bits: int):
        int8_model = quantize_openvino(float_model, calib, seven_bit=bits == 7)
        folders = {"float": tmp / f"float_ir_{bits}", "int8": tmp / f"int8_ir_{bits}"}
        for name, model in (("float", float_model), ("int8", int8_model)):
            folders[name].mkdir()
            ov.save_model(model, str(folders[name] / "model.xml"), compress_to_fp16=False)
        engines = {"float": OpenVinoEngine(folders["float"], size),
                   "int8": OpenVinoEngine(folders["int8"], size, "int8")}
        sizes = {name: (f / "model.bin").stat().st_size + (f / "model.xml").stat().st_size
                 for name, f in folders.items()}
        return int8_model, _report("openvino", predictor, model_path, engines, sizes, batch, max_drop, bits)
    int8_model, report = _seven_else_eight(candidate)
    with building_folder(out) as building:
        save_ir(int8_model, building, header, digest, int8_report=report.to_dict())
    return out, report


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
