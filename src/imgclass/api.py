"""The Python API, one function per CLI verb (``imgclass VERB`` calls these): check, train (and sweep, tune,
lr_find, augment_preview), load, predict, submit, explain, embed, similar, evaluate, compare, export, serve, list_models,
pretrained_models, cache_dir, cache_info, cache_clear, demo. The verbs that are not train, load, predict,
submit or evaluate import their modules when called, on purpose: checking data, listing models or clearing
the cache need not pay for the evaluation and plotting stack."""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Iterable

from .data.shards import shards_of
from .errors import UserError
from .evaluation.evaluate import Evaluation, LabelsCsv, evaluate  # noqa: F401  (re-exported)
from .prediction.predictor import Predictor, expand_inputs
from .prediction.submit import write_submission
from .training.loop import Callback, Event  # noqa: F401  (re-exported: your callbacks, training/user_callbacks.py)
from .training.run import Run, train  # noqa: F401  (re-exported)


def check(data: str | Path, label_issues: bool = False, embeddings: bool = False, out: str | Path = "check_report",
          model: str | Path | None = None, **options: Any):
    """Check a dataset (counts, sizes, unusable files, duplicates, leakage) with a progress bar; returns a CheckReport.
    label_issues: also rank suspected label errors (cleanlab, on out-of-fold probabilities from the images'
    embeddings); embeddings (implied by label_issues): near-duplicates and leakage by embedding similarity and a map
    of the data. Those write label_issues.csv, near_duplicates.csv, data_map.png and check_report.html into out;
    model: what embeds the images (a run folder or model file; default the ImageNet backbone that installs with
    imgclass)."""
    from rich.progress import Progress
    from . import log
    from .data.check import check_dataset
    near_cosine = options.pop("near_cosine", None)
    with Progress(transient=True, console=log.console(), disable=not log.bars_visible(log.console())) as progress:
        task = progress.add_task("checking", total=None)
        report = check_dataset(data, on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                               **options)
    if label_issues or embeddings:
        from .curation.data_checks import NEAR_COSINE, add_embedding_checks
        report = add_embedding_checks(report, data, out, model, label_issues, near_cosine or NEAR_COSINE, **options)
    return report


def load(path: str | Path, device: str = "auto", max_pixels: int | None = None) -> Predictor:
    """A run folder or model.safetensors -> a Predictor with ``.predict(images, top_k=)``; max_pixels caps
    the images' claimed size (default decode.DEFAULT_MAX_PIXELS; the model file can only lower it)."""
    return Predictor.load(path, device, max_pixels)


def predict(model: str | Path | Predictor, inputs: Any, top_k: int | None = None, level: str = "fine",
            runtime: str | None = None, precision: str = "auto", device: str = "auto", max_pixels: int | None = None,
            pretrained: bool = False, reject: bool | float | None = None, ray: bool = False,
            address: str | None = None, ray_workers: int | None = None, out: str | Path | None = None):
    """The model's answers for files, folders, glob patterns (or PIL images / bytes): each class ranked, top_k of
    them (None: 3; refused below 1, and by a task without a ranking: a number per image); level for two-level labels.
    reject: True answers "unknown" below the model file's rejection threshold (a number: at that threshold).
    runtime auto|torch|onnx|openvino (and precision auto|float32|bf16) as prediction.runtime says; None: auto for a
    model path, and a given Predictor's own. pretrained: model names a published ImageNet classifier
    (timm:NAME), used as it is. ray: score on Ray Data (prediction/ray_predict.py; a local Ray, or the cluster
    at address; ray_workers actors), the same answers; with out (.parquet) the file written is returned."""
    if ray:
        if pretrained or isinstance(model, Predictor):
            raise UserError("--ray loads the model file in each worker: give a run folder or model file")
        from .prediction.ray_predict import ray_predict
        return ray_predict(model, [inputs] if isinstance(inputs, (str, Path)) else list(inputs), top_k, level,
                           runtime or "auto", precision, max_pixels, reject, address, ray_workers, out)
    if out is not None:
        raise UserError("--out is for --ray (Parquet); without it, --format json|csv prints the answers")
    if pretrained:
        model, runtime = Predictor.pretrained(str(model), device), None
    elif not isinstance(model, Predictor):
        model, runtime = load(model, device, max_pixels), runtime or "auto"
    model.check_request(top_k, level, reject)  # refused before the inputs are listed or the runtime chosen
    # one path, one PIL image or one bytes object is one input (a string is not a sequence of inputs)
    items = [inputs] if isinstance(inputs, (str, Path, bytes)) or hasattr(inputs, "getpixel") else list(inputs)
    shards = shards_of(items)
    if all(isinstance(i, (str, Path)) for i in items) and not shards:
        items = expand_inputs(items)
    if runtime is not None:  # the runtime for a job of this many images (shards: uncounted, as a long job), stated
        from .prediction.runtime import choose_runtime
        model.use(choose_runtime(model, runtime, precision, None if shards else len(items)))
    if shards:
        return model.predict_shards(shards, top_k, level=level, reject=reject)
    return model.predict(items, top_k=top_k, level=level, reject=reject)


def submit(model: str | Path | Predictor, test_dir: str | Path, out: str | Path = "submission.csv",
           id_column: str = "ID", target_column: str = "TARGET", target: str = "index", level: str = "fine",
           runtime: str | None = None, precision: str = "auto", max_pixels: int | None = None,
           form: str = "auto", reject: bool | float | None = None, ray: bool = False, address: str | None = None,
           ray_workers: int | None = None) -> Path:
    """Write a Kaggle submission CSV for every image in test_dir (one row each: an unreadable image gets the
    task's answer for it: the most common class, no tag, the training mean; with a warning); returns its path. runtime: as predict's. form, for several
    tags per image: "tags" (the default: ID,TARGET with the tags separated by spaces) or "onehot" (a 0/1
    column per tag). reject: as predict's; rejected images get "unknown" (or -1 with target "index").
    ray, address, ray_workers: as predict's (the same file)."""
    predictor = model if isinstance(model, Predictor) else load(model, "cpu" if ray else "auto", max_pixels)
    runtime = runtime or (None if isinstance(model, Predictor) else "auto")
    from .prediction.ray_predict import RayJob
    path, _, _ = write_submission(predictor, test_dir, out, id_column, target_column, target, level, runtime,
                                  precision, form, reject, RayJob(address, ray_workers) if ray else None)
    return path


def list_models(zoo: str | None = None, pattern: str | None = None) -> list[str]:
    """Model names: imgclass's own (default), or a zoo's ('torchvision' / 'timm'), filtered by a glob."""
    if zoo is None:
        from .models import list_models as registered
        names = [spec.name for spec in registered()]
    elif zoo == "torchvision":
        import torchvision
        names = [f"torchvision:{n}" for n in torchvision.models.list_models()]
    elif zoo == "timm":
        import timm
        names = [f"timm:{n}" for n in timm.list_models()]
    else:
        raise UserError(f"unknown zoo '{zoo}' (use torchvision or timm)")
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n.split(":", 1)[-1], pattern) or fnmatch.fnmatch(n, pattern)]
    return names


def pretrained_models(pattern: str | None = None) -> list:
    """Backbones whose pretrained weights are available offline now (WeightOrigin: model, source, location,
    licence): installed weight packages, then the timm and torchvision hub caches."""
    from .models.pretrained import available
    return [o for o in available() if not pattern or fnmatch.fnmatch(o.model, pattern)
            or fnmatch.fnmatch(o.model.split(":", 1)[-1], pattern)]


def cache_dir() -> Path:
    """The decoded-image cache folder (IMGCLASS_CACHE_DIR, else ~/.cache/imgclass)."""
    from .data.cache import default_cache_dir
    return default_cache_dir()


def cache_info(directory: str | Path | None = None) -> list[dict[str, Any]]:
    """The cache's entries (key, images, img_size, root, bytes, last_used) and orphaned temp files."""
    from .data.cache import cache_entries
    return cache_entries(Path(directory).expanduser() if directory else None)


def cache_clear(older_than: float | None = None, directory: str | Path | None = None) -> tuple[int, int]:
    """Remove cache entries (all, or those unused for older_than seconds) and orphaned temp files; entries
    being filled now are kept. Returns (files removed, bytes freed)."""
    from .data.cache import clear_cache
    return clear_cache(Path(directory).expanduser() if directory else None, older_than)


def demo(out: str | Path | None = None, data_dir: str | Path = "demo-data/digits") -> Run:
    from .digits_demo import run_demo
    return run_demo(out=out, data_dir=data_dir)


def compare(runs: Iterable[str | Path], html_out: str | Path | None = None, sort: str | None = None,
            report: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per run (model, the settings that differ, input size, epochs, time, val/test accuracy, test
    macro F1), the verdict made on validation accuracy; html_out: the table and the overlaid validation
    curves as one HTML file (the curves also as <name>_val_curves.png beside it); sort: a column;
    report: a folder for the written summary across the runs (report.md, report.html, val_curves.png)."""
    from .evaluation.compare import compare_html, compare_rows
    from .figures import png_bytes
    rows = compare_rows(list(runs), sort)
    if html_out:
        html_out = Path(html_out).expanduser()
        png = png_bytes(rows.curves())
        html_out.with_name(f"{html_out.stem}_val_curves.png").write_bytes(png)
        html_out.write_text(compare_html(rows, png))
    if report:
        from .evaluation.summary import write_summary
        write_summary(rows, report)
    return rows


def sweep(data: str | Path | None, setting: str, values: Iterable[Any], out: str | Path | None = None,
          config: str | Path | None = None, **options: Any):
    """`imgclass train DATA --sweep SETTING=V1,V2,...`: one run per value (all else equal), then the comparison
    and its written summary (returns runs, comparison and the summary folder)."""
    from .tuning.sweep import sweep as run_sweep
    return run_sweep(data, setting.replace("-", "_"), list(values), out, config, **options)


def lr_find(data: str | Path, out: str | Path = "lr_find.png", steps: int = 100, config: str | Path | None = None,
            **options: Any):
    """`imgclass lr-find`: the learning-rate range test on what train would train (train's options); returns
    lrs, losses, the suggested rate and the plot's path."""
    from .training.lr_find import lr_find as range_test
    return range_test(data, out=out, steps=steps, config=config, **options)


def export(model: str | Path, format: str = "onnx", out: str | Path | None = None, settings=None, **options: Any):
    """`imgclass export`: one export (onnx, torchscript, openvino, tflite, coreml, triton or hub), checked before
    it is kept; returns an export.formats.Exported (path, parity with PyTorch, what else was checked: the int8
    report, Core ML's spec...). settings: an export.formats.ExportSettings, or its fields as options (quantize,
    max_accuracy_drop, calibration_images, half, backend, name)."""
    from .exports.formats import ExportSettings, export as run_export
    return run_export(model, format, out, settings if settings is not None else ExportSettings(**options))


def serve(model: str | Path, settings=None, **options: Any) -> None:
    """`imgclass serve`: the web service for a model until stopped; settings: a serving.settings.ServeSettings, or its
    fields as options (host, port, workers, runtime, max_upload_mb, api_key_file, cors, ...)."""
    from .serving.app import serve as run_service
    from .serving.settings import ServeSettings
    run_service(model, settings if settings is not None else ServeSettings(**options))


def tune(data: str | Path, **options: Any):
    """`imgclass tune`: an Optuna search over train settings (trials, sampler, pruner, cv, space, storage...)."""
    from .tuning.tune import tune as run_tune
    return run_tune(data, **options)


def augment_preview(data: str | Path, out: str | Path = "augment_preview.png", images: int = 8, draws: int = 4,
                    config: str | Path | None = None, **options: Any) -> Path:
    """`imgclass augment-preview`: a few training images and what the augmentation (train's options) makes of them."""
    from .training.preview import augment_preview as preview
    return preview(data, out, images, draws, config, **options)


def embed(model: str | Path | Predictor, data: str | Path, out: str | Path | None = None, pretrained: bool = False,
          cache: bool = True, device: str = "auto"):
    """`imgclass embed`: one vector per image of a folder (an Embeddings: .vectors N x D, .paths, .labels), the
    pooled backbone features of a trained model, or with pretrained of a published backbone (timm:NAME) as it is;
    out: NAME.npy (+ .csv, .json) or NAME.parquet."""
    from .prediction.embed import embed as run_embed
    return run_embed(model, data, out, pretrained=pretrained, device=device, cache=cache)


def similar(index_or_data: str | Path, queries: Any, k: int = 8, out: str | Path | None = "similar.html",
            model: str | Path | None = None, device: str = "auto") -> list[dict[str, Any]]:
    """`imgclass similar`: the k images nearest to each query (cosine of embeddings) in an embeddings file or a
    folder (embedded by model, default the ImageNet backbone), with an HTML gallery at out."""
    from .curation.similar import similar as run_similar
    return run_similar(index_or_data, [queries] if isinstance(queries, (str, Path)) else list(queries), k, out, model,
                       device)


def explain(model: str | Path | Predictor, inputs: Any, label: str | None = None, out: str | Path = "explain",
            method: str = "gradcam", device: str = "auto") -> list[dict[str, Any]]:
    """`imgclass explain`: a class-activation heatmap over each image (of the predicted class, or `label`)."""
    from .prediction.explain import explain as run_explain
    return run_explain(model, inputs, label, out, method, device)
