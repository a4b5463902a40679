"""The Python API, one function per CLI verb (``imgclass VERB`` calls these): check, train (and sweep, tune,
lr_find, augment_preview), load, predict, submit, explain, embed, similar, evaluate, compare, export, serve, list_models,
pretrained_models, cache_dir, cache_info, cache_clear, demo.

Each verb takes one request (imgclass/requests.py: a frozen dataclass, its fields the verb's options, checked when
made) as `request=`, or its fields as arguments (the request's positional fields in order, then keywords), and the
command line builds the same request from the same class: what Python and the command line accept cannot differ.
The verbs that are not train, load, predict, submit or evaluate import their modules when called, on purpose:
checking data, listing models or clearing the cache need not pay for the evaluation and plotting stack."""
from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path
from typing import Any, Iterable

from .core.errors import UserError
from .data.shards import shards_of
from .evaluation.evaluate import Evaluation, LabelsCsv, evaluate as evaluate_split  # noqa: F401  (re-exported)
from .inference.predictor import Predictor, expand_inputs
from .prediction.submit import write_submission
from .requests import (AppRequest, CheckRequest, CompareRequest, DemoRequest, EmbedRequest, EvaluateRequest, ExplainRequest, ExportRequest,
                       PredictRequest, PreviewRequest, LrFindRequest, SimilarRequest, SubmitRequest, TuneRequest,
                       paths)
from .training.loop.fit import Callback, Event  # noqa: F401  (re-exported: your callbacks, training/integrations/user_callbacks.py)
from .training.run import Run, train  # noqa: F401  (re-exported)


def make_request(cls: type, args: tuple, request: Any = None, **options: Any):
    """The verb's request: the one given, or one made of positional arguments (the request's positional fields, in
    order) and keywords; a wrong name or a value out of range is one UserError."""
    if request is not None:
        if args or options:
            raise UserError(f"give a {cls.__name__} or its fields, not both")
        if not isinstance(request, cls):
            raise UserError(f"expected a {cls.__name__}, got {type(request).__name__}")
        return request
    names = [f.name for f in dataclasses.fields(cls) if not f.kw_only]
    if len(args) > len(names):
        raise UserError(f"{cls.__name__} takes at most {len(names)} positional arguments ({', '.join(names)})")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)}: {cls.__name__} takes {', '.join(sorted(known))}")
    try:
        return cls(**dict(zip(names, args)), **options)
    except TypeError as exc:  # a required field missing
        raise UserError(f"{cls.__name__}: {exc}") from None


def check(*args: Any, request: CheckRequest | None = None, **options: Any):
    """Check a dataset (counts, sizes, unusable files, duplicates, leakage) with a progress bar; returns a
    CheckReport. Takes a CheckRequest or its fields: label_issues also ranks suspected label errors (cleanlab, on
    out-of-fold probabilities from the images' embeddings); embeddings (implied by label_issues): near-duplicates
    and leakage by embedding similarity and a map of the data. Those write label_issues.csv, near_duplicates.csv,
    data_map.png and check_report.html into out; model: what embeds the images (a run folder or model file;
    default the ImageNet backbone that installs with imgclass)."""
    from rich.progress import Progress
    from .core import log
    from .data.check import check_dataset
    r = make_request(CheckRequest, args, request, **options)
    with Progress(transient=True, console=log.console(), disable=not log.bars_visible(log.console())) as progress:
        task = progress.add_task("checking", total=None)
        report = check_dataset(r.data, on_progress=lambda done, total: progress.update(task, completed=done,
                                                                                       total=total),
                               **r.split_options())
    if r.label_issues or r.embeddings:
        from .curation.data_checks import add_embedding_checks
        report = add_embedding_checks(report, r.data, r.out, r.model, r.label_issues, r.near_cosine,
                                      **r.split_options())
    return report


def load(path: str | Path, device: str = "auto", max_pixels: int | None = None) -> Predictor:
    """A run folder or model.safetensors -> a Predictor with ``.predict(images, top_k=)``; max_pixels caps
    the images' claimed size (default decode.DEFAULT_MAX_PIXELS; the model file can only lower it)."""
    return Predictor.load(path, device, max_pixels)


def predict(*args: Any, request: PredictRequest | None = None, **options: Any):
    """The model's answers for files, folders, glob patterns (or PIL images / bytes): each class ranked, top_k of
    them (None: 3; refused by a task without a ranking: a number per image); level for two-level labels.
    Takes a PredictRequest or its fields (model, inputs, then keywords). reject: answer "unknown" below the model
    file's rejection threshold (reject_threshold: at that one). runtime auto|torch|onnx|openvino (and precision
    auto|float32|bf16) as inference.runtime says; a given Predictor keeps its own engine unless runtime names one.
    pretrained: model names a published ImageNet classifier (timm:NAME), used as it is. ray: score on Ray Data
    (prediction/ray_predict.py; a local Ray, or the cluster at address; ray_workers actors), the same answers;
    with out (.parquet) the file written is returned."""
    r = make_request(PredictRequest, args, request, **options)
    inputs = paths(r.inputs)
    if r.ray:
        from .prediction.ray_predict import ray_predict
        return ray_predict(r.model, inputs, r.top_k, r.level, r.runtime, r.precision, r.max_pixels, r.rejection,
                           r.address, r.ray_workers, r.out)
    if r.pretrained:
        model, runtime = Predictor.pretrained(str(r.model), r.device), None
    elif isinstance(r.model, Predictor):
        model, runtime = r.model, (None if r.runtime == "auto" else r.runtime)
    else:
        model, runtime = load(r.model, r.device, r.max_pixels), r.runtime
    model.check_request(r.top_k, r.level, r.rejection)  # refused before the inputs are listed or the runtime chosen
    shards = shards_of(inputs)
    if all(isinstance(i, (str, Path)) for i in inputs) and not shards:
        inputs = expand_inputs(inputs)
    if runtime is not None:  # the runtime for a job of this many images (shards: uncounted, as a long job), stated
        from .inference.runtime import choose_runtime
        model.use(choose_runtime(model, runtime, r.precision, None if shards else len(inputs)))
    if shards:
        return model.predict_shards(shards, r.top_k, level=r.level, reject=r.rejection)
    return model.predict(inputs, top_k=r.top_k, level=r.level, reject=r.rejection)


def submit(*args: Any, request: SubmitRequest | None = None, **options: Any) -> Path:
    """Write a Kaggle submission CSV for every image in test_dir (one row each: an unreadable image gets the
    task's answer for it: the most common class, no tag, the training mean; with a warning); returns its path.
    Takes a SubmitRequest or its fields (model, test_dir, out, then keywords). runtime: as predict's. form, for
    several tags per image: "tags" (the default: ID,TARGET with the tags separated by spaces) or "onehot" (a 0/1
    column per tag). reject: as predict's; rejected images get "unknown" (or -1 with target "index"). ray,
    address, ray_workers: as predict's (the same file)."""
    r = make_request(SubmitRequest, args, request, **options)
    given = isinstance(r.model, Predictor)
    predictor = r.model if given else load(r.model, "cpu" if r.ray else "auto", r.max_pixels)
    runtime = None if given and r.runtime == "auto" else r.runtime
    from .prediction.ray_predict import RayJob
    path, _, _ = write_submission(predictor, r.test_dir, r.out, r.id_column, r.target_column, r.target, r.level,
                                  runtime, r.precision, r.form, r.rejection,
                                  RayJob(r.address, r.ray_workers) if r.ray else None)
    return path


def evaluate(*args: Any, request: EvaluateRequest | None = None, **options: Any) -> Evaluation:
    """Metrics, figures and a written report for a split of a run (or another folder: data, with its labels CSV);
    returns an Evaluation (.metrics, .headline, .dir holding report.html). Takes an EvaluateRequest or its fields
    (model, data, then keywords): split test|val|train|all, out (default <run>/eval/<split>/), data_map (a t-SNE
    map of the embeddings, the mistakes marked), runtime and precision as predict's."""
    r = make_request(EvaluateRequest, args, request, **options)
    labels = None if r.labels is None else LabelsCsv(r.labels, r.id_column, r.label_column, r.tag_columns)
    return evaluate_split(r.model, r.data, split=r.split, out=r.out, device=r.device, max_pixels=r.max_pixels,
                          runtime=r.runtime, precision=r.precision, labels=labels, data_map=r.data_map)


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


def demo(*args: Any, request: DemoRequest | None = None, **options: Any) -> Run:
    """`imgclass demo`: scikit-learn's handwritten digits written as PNGs (data_dir), trained and evaluated (a
    DemoRequest, or out and data_dir)."""
    from .training.demo import run_demo
    r = make_request(DemoRequest, args, request, **options)
    return run_demo(out=r.out, data_dir=r.data_dir)


def compare(*args: Any, request: CompareRequest | None = None, **options: Any) -> list[dict[str, Any]]:
    """One row per run (model, the settings that differ, input size, epochs, time, val/test scores), the verdict
    made on validation. Takes a CompareRequest or its fields (runs, then keywords): html: the table and the
    overlaid validation curves as one HTML file (the curves also as <name>_val_curves.png beside it); sort: a
    column; report: a folder for the written summary across the runs (report.md, report.html, val_curves.png)."""
    from .core.figures import png_bytes
    from .core.files import write_bytes_atomic, write_text_atomic
    from .evaluation.compare import compare_html, compare_rows
    r = make_request(CompareRequest, args, request, **options)
    rows = compare_rows(paths(r.runs), r.sort)
    if r.html:
        html_out = Path(r.html).expanduser()
        png = png_bytes(rows.curves())
        write_bytes_atomic(html_out.with_name(f"{html_out.stem}_val_curves.png"), png)
        write_text_atomic(html_out, compare_html(rows, png))
    if r.report:
        from .evaluation.summary import write_summary
        write_summary(rows, r.report)
    return rows


def sweep(data: str | Path | None, setting: str, values: Iterable[Any], out: str | Path | None = None,
          config: str | Path | None = None, **options: Any):
    """`imgclass train DATA --sweep SETTING=V1,V2,...`: one run per value (all else equal), then the comparison
    and its written summary (returns runs, comparison and the summary folder)."""
    from .tuning.sweep import sweep as run_sweep
    return run_sweep(data, setting.replace("-", "_"), list(values), out, config, **options)


def _training_request(cls: type, args: tuple, request: Any, options: dict[str, Any]):
    """A request of a verb that also takes training options: its own fields, the rest are TrainConfig's."""
    if request is not None:
        return make_request(cls, args, request, **options)
    own = {f.name for f in dataclasses.fields(cls) if f.init} - {"options"}
    mine = {k: v for k, v in options.items() if k in own}
    return make_request(cls, args, None, options={k: v for k, v in options.items() if k not in own}, **mine)


def lr_find(*args: Any, request: LrFindRequest | None = None, **options: Any):
    """`imgclass lr-find`: the learning-rate range test on what train would train (an LrFindRequest, or data, plot,
    steps, config and train's options); returns lrs, losses, the suggested rate and the plot's path."""
    from .training.lr_find import lr_find as range_test
    r = _training_request(LrFindRequest, args, request, options)
    if "out" in r.options:
        raise UserError("lr-find writes no run folder: --plot (plot= in Python) names the plot it writes")
    return range_test(r.data, out=r.plot, steps=r.steps, config=r.config, **r.options)


def export(*args: Any, request: ExportRequest | None = None, settings=None, **options: Any):
    """`imgclass export`: one export (onnx, torchscript, openvino, tflite, coreml, triton or hub), checked before
    it is kept; returns an exports.formats.Exported (path, parity with PyTorch, what else was checked: the int8
    report, Core ML's spec...). Takes an ExportRequest or its fields (model, format, out) and settings: an
    exports.settings.ExportSettings, or its fields as keywords (quantize, max_accuracy_drop, calibration_images,
    half, backend, name)."""
    from .exports.formats import export as run_export
    from .exports.settings import ExportSettings
    mine = {f.name for f in dataclasses.fields(ExportRequest)}
    r = make_request(ExportRequest, args, request, **{k: v for k, v in options.items() if k in mine})
    rest = {k: v for k, v in options.items() if k not in mine}
    return run_export(r.model, r.format, r.out, settings if settings is not None else
                      make_request(ExportSettings, (), None, **rest))


def serve(model: str | Path, settings=None, **options: Any) -> None:
    """`imgclass serve`: the web service for a model until stopped; settings: a serving.settings.ServeSettings, or its
    fields as options (host, port, workers, runtime, max_upload_mb, api_key_file, cors, ...)."""
    from .serving.app import serve as run_service
    from .serving.settings import ServeSettings
    run_service(model, settings if settings is not None else make_request(ServeSettings, (), None, **options))


def app(*args: Any, request: AppRequest | None = None, **options: Any) -> None:
    """`imgclass app`: the workbench, a local web app over a folder of runs, until stopped (an AppRequest, or its
    fields: runs, data, label_issues, host, port, open_browser). It prints its URL, which carries a one-time token."""
    from .workbench.serve import run_workbench
    run_workbench(make_request(AppRequest, args, request, **options))


def tune(*args: Any, request: TuneRequest | None = None, **options: Any):
    """`imgclass tune`: an Optuna search over train settings (a TuneRequest, or data, trials, sampler, pruner, cv,
    space, storage, study, config and train's options, fixed in every trial; time_budget bounds the search)."""
    from .tuning.tune import tune as run_tune
    r = _training_request(TuneRequest, args, request, options)
    fixed = dict(r.options)
    out = fixed.pop("out", None) or "runs/tune"
    return run_tune(r.data, trials=r.trials, sampler=r.sampler, space=r.space, time_budget=fixed.pop("time_budget", None),
                    storage=r.storage, study=r.study, out=out, config=r.config, pruner=r.pruner, cv=r.cv, **fixed)


def augment_preview(*args: Any, request: PreviewRequest | None = None, **options: Any) -> Path:
    """`imgclass augment-preview`: a few training images and what the augmentation (train's options) makes of them
    (a PreviewRequest, or data, preview, images, draws, config and train's options)."""
    from .training.preview import augment_preview as preview
    r = _training_request(PreviewRequest, args, request, options)
    return preview(r.data, r.preview, r.images, r.draws, r.config, **r.options)


def embed(*args: Any, request: EmbedRequest | None = None, **options: Any):
    """`imgclass embed`: one vector per image of a folder (an Embeddings: .vectors N x D, .paths, .labels), the
    pooled backbone features of a trained model, or with pretrained of a published backbone (timm:NAME) as it is;
    out: NAME.npy (+ .csv, .json) or NAME.parquet. Takes an EmbedRequest or its fields (model, data, out, ...)."""
    from .prediction.embed import embed as run_embed
    r = make_request(EmbedRequest, args, request, **options)
    return run_embed(r.model, r.data, r.out, pretrained=r.pretrained, device=r.device, cache=r.cache)


def similar(*args: Any, request: SimilarRequest | None = None, **options: Any) -> list[dict[str, Any]]:
    """`imgclass similar`: the k images nearest to each query (cosine of embeddings) in an embeddings file or a
    folder (embedded by model, default the ImageNet backbone), with an HTML gallery at out. Takes a
    SimilarRequest or its fields (index, queries, then keywords)."""
    from .curation.similar import similar as run_similar
    r = make_request(SimilarRequest, args, request, **options)
    return run_similar(r.index, paths(r.queries), r.k, r.out, r.model, r.device)


def explain(*args: Any, request: ExplainRequest | None = None, **options: Any) -> list[dict[str, Any]]:
    """`imgclass explain`: a class-activation heatmap over each image (of the predicted class, or `label`). Takes
    an ExplainRequest or its fields (model, inputs, then keywords)."""
    from .prediction.explain import explain as run_explain
    r = make_request(ExplainRequest, args, request, **options)
    return run_explain(r.model, r.inputs, r.label, r.out, r.method, r.device)
