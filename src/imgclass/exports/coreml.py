"""`imgclass export MODEL --format coreml` (the `coreml` extra): a Core ML ML Program (.mlpackage) for iOS and
macOS apps, converted by coremltools from `torch.export` of the same inference module the other exports hold
(pixels 0..255, N x 3 x S x S float, in; normalisation, TTA and calibration inside).

One class per image: a Core ML classifier at batch 1 (outputs classLabel and classLabel_probs, the class
labels in the program), so Xcode and Vision show the label. Other label structures (coarse -> fine, several
tags) output the probabilities array, batch 1 to 64. Either way the model file's header (class names,
preprocessing) and SHA-256 are the model's user-defined metadata.

Core ML runs only on Apple's systems. Elsewhere the converted spec is checked (input name and shape, outputs,
class labels, metadata) and the export says plainly that numerical parity needs macOS; on macOS the
probabilities are compared with PyTorch's as for every other format.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError
from ..core.extras import require
from ..core.files import building_folder
from ..models.modelfile import META_KEY, SOURCE_KEY, file_sha256
from ..inference.graph import InferenceModule, check_parity, default_export_path, parity_reference

MAX_BATCH = 64  # the batch range of a probabilities-array model


def _coremltools():
    """coremltools, imported with TensorFlow hidden from it. It imports TensorFlow whenever that is installed (the
    tflite extra brings it) for converters this export never uses, and TensorFlow in a process that runs PyTorch
    is a crash waiting to happen: loaded before PyTorch's Triton it segfaults the process, and with it loaded the
    test suite died by SIGSEGV (TensorFlow's own signal handler in place). Hidden, coremltools records "no
    TensorFlow" and converts PyTorch programs as before."""
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    hide = "tensorflow" not in sys.modules
    if hide:
        sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError while this is in place
    try:
        return require("coremltools", "coreml", "Core ML export (coremltools)")
    finally:
        if hide:
            sys.modules.pop("tensorflow", None)


def export_coreml(model: str | Path, out: str | Path | None = None, half: bool = False
                  ) -> tuple[Path, float | None, list[str]]:
    """The .mlpackage (default MODEL.mlpackage beside the model file; half: float16 compute, as the Neural Engine
    runs it). Returns (path, max |probability difference| or None where Core ML cannot run, what was checked)."""
    ct = _coremltools()
    model_path, predictor, batch, expected = parity_reference(model)
    out = Path(out).expanduser() if out else default_export_path(model_path, ".mlpackage")
    module = InferenceModule(predictor.model, predictor.pre, predictor.tta, predictor.temperature,
                             predictor.task).eval()
    size, classifier = predictor.pre.img_size, predictor.task.supports("coreml_classifier")
    example = batch[:1].float()
    if classifier:
        program = torch.export.export(module, (example,))
        shape = (1, 3, size, size)
    else:
        program = torch.export.export(module, (example.repeat(2, 1, 1, 1),), dynamic_shapes={
            "pixels": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}})
        shape = (ct.RangeDim(1, MAX_BATCH, 1), 3, size, size)
    converted = ct.convert(
        program.run_decompositions({}), inputs=[ct.TensorType(name="pixels", shape=shape)],
        outputs=None if classifier else [ct.TensorType(name="probabilities")],
        classifier_config=ct.ClassifierConfig(list(predictor.classes)) if classifier else None,
        convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
        compute_precision=ct.precision.FLOAT16 if half else ct.precision.FLOAT32)
    converted.short_description = f"imgclass {predictor.header.arch.name}: {predictor.task.answering(predictor.classes)}"
    converted.user_defined_metadata[META_KEY] = predictor.header.to_json()
    converted.user_defined_metadata[SOURCE_KEY] = file_sha256(model_path)
    checked = check_spec(converted.get_spec(), list(predictor.classes), size, classifier)
    diff = _parity(converted, batch, expected, list(predictor.classes) if classifier else None, half,
                   predictor.task.answer_scale)
    with building_folder(out) as building:
        converted.save(str(building / "model.mlpackage"))
        (building / "model.mlpackage").rename(building / "staged")
        # the package itself is the folder handed on: move its contents up into the folder being built
        for item in (building / "staged").iterdir():
            item.rename(building / item.name)
        (building / "staged").rmdir()
    return out, diff, checked + ([] if diff is not None else
                                 ["numerical parity needs macOS (Core ML runs only on Apple's systems): "
                                  "the spec was checked here"])


def check_spec(spec, classes: list[str], size: int, classifier: bool) -> list[str]:
    """What the converted spec must say, checked: a UserError names the first thing that is wrong."""
    inputs = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    if list(inputs) != ["pixels"] or inputs["pixels"][1:] != [3, size, size]:
        raise UserError(f"Core ML export: expected one input pixels (N, 3, {size}, {size}), got {inputs}")
    outputs = [o.name for o in spec.description.output]
    if classifier:
        labels = spec_class_labels(spec)
        if labels != classes or spec.description.predictedFeatureName != "classLabel":
            raise UserError(f"Core ML export: the classifier's labels {labels[:5]} are not the model's classes")
    elif outputs != ["probabilities"]:
        raise UserError(f"Core ML export: expected the output probabilities, got {outputs}")
    metadata = dict(spec.description.metadata.userDefined)
    if META_KEY not in metadata or SOURCE_KEY not in metadata:
        raise UserError("Core ML export: the imgclass metadata is missing from the spec")
    return [f"Core ML spec checked: input pixels {inputs['pixels']}, outputs {', '.join(outputs)}, "
            + (f"{len(classes)} class labels" if classifier else "probabilities over the classes")
            + ", imgclass metadata"]


def spec_class_labels(spec) -> list[str]:
    """The class labels of an ML Program classifier (its classify operation's constant list)."""
    for block in spec.mlProgram.functions["main"].block_specializations.values():
        for op in block.operations:
            if op.type == "classify":
                values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
                return [v.immediateValue.tensor.strings.values[0] for v in values]
    return []


def _parity(converted, batch: torch.Tensor, expected: np.ndarray, classes: list[str] | None, half: bool,
            scale: float = 1.0) -> float | None:
    """The probabilities' largest difference from PyTorch's on macOS; None elsewhere (Core ML cannot run).
    classes: a classifier's labels, in the model's order (its probabilities come as a dict)."""
    if sys.platform != "darwin":
        return None
    rows = []
    for image in batch.float().numpy():
        result = converted.predict({"pixels": image[None]})
        if classes is not None:
            rows.append([result["classLabel_probs"][c] for c in classes])
        else:
            rows.append(np.asarray(result["probabilities"])[0])
    return check_parity("coreml", np.asarray(rows, dtype=np.float32), expected, half, scale)
