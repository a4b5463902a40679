"""`imgclass export MODEL --format hub --out DIR`: a folder to hand a model on, laid out as model hubs take
it (`huggingface_hub.upload_folder(folder_path=DIR, ...)`; nothing is uploaded from here):

  imgclass.safetensors  the imgclass model file (weights, architecture, classes, preprocessing, temperature):
                        `imgclass predict DIR` loads it
  model.safetensors     for a timm backbone with a plain head: the weights in timm's own layout, and
  config.json           timm's config for them (timm.create_model("local-dir:DIR", pretrained=True) loads it), with an
                        "imgclass" section; for other models config.json describes the imgclass file
  model.onnx            the ONNX export (probabilities from 0..255 pixels, parity-checked)
  README.md             the model card, written from the run: use, data, training, results, failure modes, limits
  figures/              the card's figures (confusion matrix, reliability diagrams), when the run has them
"""
from __future__ import annotations

import html
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..core.files import building_folder
from ..models.modelfile import resolve_model_path
from ..inference.predictor import Predictor
from ..core.rundir import RunDir, best_epoch_phrase
from ..inference.graph import export_model
from ..inference.quantize import Int8Report, export_int8

CARD_FIGURES = ("confusion_matrix", "reliability", "reliability_uncalibrated", "pr_curves_tags", "ap_vs_frequency",
                "predicted_vs_true", "residuals")


def export_hub(model: str | Path, out: str | Path, int8: tuple[float, int] | None = None
               ) -> tuple[Path, Int8Report | None]:
    """The hub folder `out` (new, or empty), built in a temporary sibling and renamed into place when complete: a
    kill at any moment never leaves a folder that `predict` accepts but that lacks files. int8: (max accuracy
    drop, calibration images) to add model.int8.onnx, its report in the card (refused beyond the drop: no
    folder). Returns (out, the int8 report or None)."""
    model_path = resolve_model_path(model)
    with building_folder(Path(out)) as building:
        report = _build(model_path, building, int8)
    return Path(out).expanduser(), report


def _build(model_path: Path, out: Path, int8: tuple[float, int] | None) -> Int8Report | None:
    predictor = Predictor.load(model_path, "cpu")
    shutil.copyfile(model_path, out / "imgclass.safetensors")
    export_model(model_path, "onnx", out / "model.onnx")
    report = export_int8(model_path, "onnx", out / "model.int8.onnx", *int8)[1] if int8 else None
    timm_loadable = _write_timm(predictor, out)
    if not timm_loadable:
        (out / "config.json").write_text(json.dumps(_imgclass_config(predictor), indent=2) + "\n")
    run = RunDir.of_model(model_path)
    facts = _run_facts(run)
    figures = _copy_figures(run, out)
    (out / "README.md").write_text(model_card(predictor, facts, figures, timm_loadable, report))
    return report


def _imgclass_config(predictor: Predictor) -> dict[str, Any]:
    h = predictor.header
    config = {"format": "imgclass", "file": "imgclass.safetensors", "architecture": h.arch.to_dict(),
              "classes": list(h.classes), "preprocessing": h.preprocessing.to_dict(),
              "inference": {"tta": h.tta, "temperature": h.temperature,
                            **({"reject": h.reject.to_dict()} if h.reject is not None else {})},
              "hierarchy": h.task.header_entry(), "imgclass_version": h.imgclass_version}
    if (task := h.task.task_entry()) is not None:  # several tags: thresholds and calibration (format 2)
        config["task"] = task
    return config


def _write_timm(predictor: Predictor, out: Path) -> bool:
    """model.safetensors and config.json in timm's layout (timm's own save_for_hf), for a timm backbone with a
    single linear head; False (nothing written) for any other model."""
    name, model = predictor.header.arch.name, predictor.model
    if (not name.startswith("timm:") or not predictor.task.supports("timm_layout")
            or not isinstance(getattr(model, "head", None), nn.Linear)):
        return False
    import timm
    from timm.models import save_for_hf
    arch = name.split(":", 1)[1]
    args = dict(predictor.header.arch.args)
    net = timm.create_model(arch, pretrained=False, num_classes=len(predictor.classes), **args)
    classifier = net.pretrained_cfg.get("classifier", "head")
    state = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    state.update({f"{classifier}.weight": model.head.weight, f"{classifier}.bias": model.head.bias})
    net.load_state_dict(state)  # strict: every tensor has its place, or this export is wrong
    pre = predictor.pre
    save_for_hf(net, out, model_config={"label_names": predictor.classes}, model_args=args or None,
                safe_serialization=True,  # safetensors only: no pickle in a folder handed on
                data_config={"input_size": (3, pre.img_size, pre.img_size), "mean": tuple(pre.mean),
                             "std": tuple(pre.std), "crop_pct": 1.0, "interpolation": "bilinear"})
    config = json.loads((out / "config.json").read_text())
    config["imgclass"] = _imgclass_config(predictor)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return True


def _run_facts(run: RunDir | None) -> dict[str, Any]:
    """What the card quotes from the run folder (empty when the model file travelled alone)."""
    if run is None or not run.is_run():
        return {}
    facts: dict[str, Any] = {"config": run.read_config_dict(), "results": run.read_results()}
    facts["counts"] = run.split_counts() if run.splits.is_file() else {}
    for split in ("test", "val"):
        if (m := run.read_eval_metrics(split)) is not None:
            facts["metrics"], facts["metrics_split"] = m, split
            break
    return facts


def _copy_figures(run: RunDir | None, out: Path) -> list[str]:
    """The evaluation's card figures, copied into out/figures/. Only regular files that are inside the run folder
    are copied: a run folder received from someone else may hold `confusion_matrix.png -> ~/.ssh/id_rsa`, and
    this folder is meant for upload."""
    if run is None:
        return []
    found = []
    for split in ("test", "val"):
        folder = RunDir.eval_files(run.eval_dir(split))["figures"]
        for name in CARD_FIGURES:
            if name not in found and (data := _regular_file_inside(folder / f"{name}.png", run.path)) is not None:
                (out / "figures").mkdir(exist_ok=True)
                (out / "figures" / f"{name}.png").write_bytes(data)
                found.append(name)
        if found:
            break
    return found


def _regular_file_inside(path: Path, root: Path) -> bytes | None:
    """The bytes of `path` if it is a regular file (not a link) whose real place is inside `root`; else None."""
    try:
        if not path.resolve().is_relative_to(root.resolve()):
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))  # a link as the last part: refused here
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read() if stat.S_ISREG(os.fstat(fh.fileno()).st_mode) else None


def model_card(predictor: Predictor, facts: dict[str, Any], figures: list[str], timm_loadable: bool,
               int8: Int8Report | None = None) -> str:
    """The README.md of the folder: every number comes from the model file, the run folder or the int8 check."""
    h, classes = predictor.header, predictor.classes
    cfg, res, m = facts.get("config", {}), facts.get("results", {}), facts.get("metrics")
    weights = h.weights or {}
    names = [_escape(c) for c in classes]  # a class name is data: never Markdown or HTML in the card
    lines = [f"# {_escape(h.arch.name)} image model ({_escape(predictor.task.answering(classes))})", "",
             "Trained with [imgclass](https://pypi.org/project/imgclass/). Files: `imgclass.safetensors` (imgclass), "
             "`model.onnx` (ONNX Runtime: float pixels 0..255, N x 3 x H x W, -> probabilities)"
             + (", `model.safetensors` + `config.json` (timm: `timm.create_model('local-dir:THIS_FOLDER', "
                "pretrained=True)`; divide its logits by the temperature below before the softmax)"
                if timm_loadable else ", `config.json`")
             + (", `model.int8.onnx` (int8, same input and output; see below)" if int8 else "")
             + ".", "", "## Intended use", "",
             predictor.task.intended_use(names), "", "## Data", ""]
    counts = facts.get("counts") or {}
    if counts:
        lines += [f"From `{cfg.get('data', '?')}`, split with seed {cfg.get('seed', '?')} "
                  f"(val {cfg.get('val_split', '?')}, test {cfg.get('test_split', '?')}):", "",
                  "| class | " + " | ".join(counts) + " |", "|---|" + "---|" * len(counts)]
        lines += [f"| {name} | " + " | ".join(str(counts[s].get(c, 0)) for s in counts) + " |"
                  for c, name in zip(classes, names)]
    else:
        lines += ["The run folder was not available: no data description."]
    pre = h.preprocessing
    lines += ["", "## Training", "",
              f"- Architecture: `{h.arch.name}` with arguments `{json.dumps(h.arch.args)}`.",
              f"- Input: {pre.img_size} px ({pre.resize}), mean {list(pre.mean)}, std {list(pre.std)}.",
              f"- Starting weights: {weights.get('location') or weights.get('source', 'none (from scratch)')}"
              + (f", {weights.get('dataset')}, licence {weights.get('licence')}" if weights else "") + ".",
              f"- Recipe: {cfg.get('optimizer', '?')}, lr {res.get('plan', {}).get('lr', cfg.get('lr', '?'))}, "
              f"{res.get('epochs_run', '?')} epochs, batch "
              f"{res.get('plan', {}).get('batch_size', cfg.get('batch_size', '?'))}, augment {cfg.get('augment', '?')}, "
              f"test-time augmentation {h.tta}; the weights kept are from "
              f"{best_epoch_phrase(res)}.",
              f"- Training time: {res.get('train_seconds', '?')} s on {res.get('device', '?')}.",
              f"- {predictor.task.calibration_text(h.temperature)}", ""]
    lines += _results_section(m, facts.get("metrics_split"), figures, predictor.task.name)
    lines += _int8_section(int8)
    lines += ["## Limits", "",
              f"- Inputs are resized to {pre.img_size} px; detail finer than that is lost.",
              "- Probabilities are calibrated on the validation split only; on data unlike the training data they are "
              "not to be trusted.", "- The scores above are from one split of one dataset; expect lower on other "
              "sources (cameras, lighting, backgrounds).",
              f"- Unknown inputs: {h.reject.describe()} when asked (`predict --reject`, `?reject=true`); by design "
              f"{1 - h.reject.acceptance:.0%} of images like the validation ones are rejected too, and an unlike image "
              f"the model is sure about is still answered." if h.reject is not None else
              "- Unknown inputs: this model has no rejection threshold; it gives one of its classes to any image.", ""]
    return "\n".join(lines)


def _int8_section(report: Int8Report | None) -> list[str]:
    """Both models side by side, as the int8 check measured them in one run."""
    if report is None:
        return []
    return ["## int8 (model.int8.onnx)", "",
            f"Static int8 (ONNX Runtime, calibrated on the run's training images), checked on the {report.split} "
            f"split ({report.images} images) against the float model in the same run; allowed to lose "
            f"{report.max_drop:g} point(s) of {report.score_name}.", "",
            f"| model | {report.score_name} | size (MB) | images/s at batch 16 |", "|---|---|---|---|",
            f"| float32 (model.onnx) | {report.float_score:.4f} | {report.float_bytes / 1e6:.1f} | "
            f"{report.float_images_per_second:.0f} |",
            f"| int8 (model.int8.onnx) | {report.int8_score:.4f} | {report.int8_bytes / 1e6:.1f} | "
            f"{report.int8_images_per_second:.0f} |", "",
            f"Speeds measured on {_escape(report.cpu)}; int8 gains most on CPUs with VNNI or AMX.", ""]


def _results_section(m: dict[str, Any] | None, split: str | None, figures: list[str], task: str) -> list[str]:
    """The card's results: the metrics of the evaluation's metrics.json that its task has (CARD_RESULTS)."""
    if not m:
        return ["## Results", "", "No evaluation in the run folder.", ""]
    lines = ["## Results", "", f"On the {split} split ({m['n']} images):", "", "| metric | value |", "|---|---|"]
    return lines + CARD_RESULTS[task](m, figures)


def _class_results(m: dict[str, Any], figures: list[str]) -> list[str]:
    """One class per image (or two levels): the headline metrics, each class's, the most confused pairs."""
    lines = [f"| {k} | {m[k]:.4f} |" for k in ("accuracy", "balanced_accuracy", "macro_f1", "ece")
              if isinstance(m.get(k), (int, float))]
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {_escape(c)} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
              for c, v in m["per_class"].items()]
    lines += [""] + [f"![{f}](figures/{f}.png)" for f in figures] + ["", "## Known failure modes", ""]
    confused = m.get("most_confused") or []
    lines += [f"- {_escape(p['true'])} taken for {_escape(p['predicted'])}: {p['count']} time(s), "
              f"{100 * p['share_of_true']:.1f}% of {_escape(p['true'])}" for p in confused[:5]] or \
        ["- No confusions on this split."]
    return lines + [""]


def _tag_results(m: dict[str, Any], figures: list[str]) -> list[str]:
    """The card's results for several tags per image: mAP and the decision metrics, then each tag's AP at its
    threshold, weakest first (the known failure modes)."""
    lines = [f"| {name} | {m[k]:.4f} |" for name, k in (("mAP", "map"), ("micro AP", "micro_ap"),
                                                       ("exact match at the thresholds", "accuracy"),
                                                       ("ECE per tag (mean)", "ece_macro"),
                                                       ("macro F1 at the thresholds", "macro_f1"))
             if isinstance(m.get(k), (int, float))]
    per = m["per_tag"]
    order = sorted(per, key=lambda t: (per[t]["ap"] is None, per[t]["ap"] or 0.0))
    lines += ["", "| tag | AP | threshold | precision | recall | F1 | support |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {_escape(t)} | {'n/a' if per[t]['ap'] is None else format(per[t]['ap'], '.4f')} | "
              f"{per[t]['threshold']:.3f} | {per[t]['precision']:.4f} | {per[t]['recall']:.4f} | {per[t]['f1']:.4f} | "
              f"{per[t]['support']} |" for t in order]
    lines += [""] + [f"![{f}](figures/{f}.png)" for f in figures] + ["", "## Known failure modes", ""]
    weak = [t for t in order if per[t]["ap"] is not None][:5]
    lines += [f"- {_escape(t)}: AP {per[t]['ap']:.3f} on {per[t]['support']} image(s)" for t in weak] or \
        ["- No tag could be scored on this split."]
    return lines + [""]


def _number_results(m: dict[str, Any], figures: list[str]) -> list[str]:
    """A number per image: the errors against the baseline of the training mean, and the largest error."""
    lines = [f"| {name} | {m[k]:.4g} |" for name, k in (("MAE", "mae"), ("RMSE", "rmse"), ("R²", "r2"),
                                                       ("Spearman", "spearman"), ("MAE of the training mean",
                                                                                  "baseline_mae"))]
    lines += [""] + [f"![{f}](figures/{f}.png)" for f in figures] + ["", "## Known failure modes", ""]
    return lines + [f"- The largest error on this split: {m['max_error']:.4g}; the model's mean error (its bias) "
                    f"{m['mean_error']:+.4g}.", ""]


# The card's results per task (models/tasks), from the evaluation's metrics.json (evaluation/tasks.py writes it).
CARD_RESULTS = {"single-label": _class_results, "two-level": _class_results, "multi-label": _tag_results,
                "regression": _number_results}


def _escape(text: str) -> str:
    """A name as plain text in Markdown (a table cell included): HTML's special characters as entities, Markdown's
    backslash-escaped, line breaks as spaces."""
    text = html.escape(str(text), quote=False).replace("\r", " ").replace("\n", " ")
    return "".join("\\" + ch if ch in MARKDOWN_SPECIAL else ch for ch in text)


MARKDOWN_SPECIAL = set("\\`*_{}[]()#+-!|~")
