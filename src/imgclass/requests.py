"""What each verb is asked: one frozen dataclass per verb, its fields the verb's options (the comment after a field
is its help text, on the command line and here), checked once in `__post_init__`. `imgclass.api` takes a request
(or its fields as arguments) and the command line is generated from the same class (core/options.py), so the
Python API and the command line cannot disagree. train, tune, lr-find and augment-preview also take every
training option (training/config.py's TrainConfig); serve's options are serving/settings.py's ServeSettings and
export's are exports/settings.py's ExportSettings.

Light on purpose: building the parser imports this module, and it must not import torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .core.errors import UserError
from .core.options import option
from .data.defaults import DEFAULT_MAX_PIXELS, NEAR_COSINE, NEAR_DISTANCE
from .exports.settings import FORMATS
from .inference.defaults import RuntimeChoice
from .training.config import TrainConfig

INPUTS_HELP = ("image files, folders or glob patterns; or WebDataset-style .tar shards (local, globs, {000..099} "
               "ranges, or any fsspec URL), read as a stream")


def _at_least(value: int | float | None, least: int | float, flag: str) -> None:
    if value is not None and value < least:
        raise UserError(f"{flag} must be at least {least}")


@dataclass(frozen=True, kw_only=True)
class Scoring(RuntimeChoice):
    """How a model file is run: the options predict, submit and evaluate share."""
    max_pixels: int = option(DEFAULT_MAX_PIXELS, flags=("--max-image-pixels",), metavar="N")  # refuse images whose header claims
    # more pixels; a model file can lower this, never raise it

    def __post_init__(self) -> None:
        _at_least(self.max_pixels, 1, "--max-image-pixels")


@dataclass(frozen=True, kw_only=True)
class Rejecting:
    """'None of these': the options predict and submit share."""
    reject: bool = False  # answer 'unknown' for an image unlike the training images: its embedding's similarity to
    # its k-th nearest training image is below the threshold set on validation at training (see the model card)
    reject_threshold: float | None = option(None, metavar="T")  # reject below this score instead: the k-NN
    # similarity (-1..1); for a model file without a stored rule, the highest probability (0..1)

    @property
    def rejection(self) -> bool | float | None:
        """What the Predictor takes: a threshold, True (the model file's), or None (no rejection)."""
        return self.reject_threshold if self.reject_threshold is not None else (True if self.reject else None)


@dataclass(frozen=True, kw_only=True)
class OnRay:
    """Scoring on Ray Data: the options predict and submit share."""
    ray: bool = False  # score on Ray Data (the ray extra): a local Ray, or the cluster at --address; same answers
    address: str | None = None  # --ray: join this Ray cluster (e.g. ray://head:10001, or auto)
    ray_workers: int | None = option(None, metavar="N")  # --ray: actors, each loading the model once
    # [default: one per 2 CPUs of the cluster]

    def __post_init__(self) -> None:
        if not self.ray and (self.address is not None or self.ray_workers is not None):
            raise UserError("--address and --ray-workers are for --ray")
        _at_least(self.ray_workers, 1, "--ray-workers")


@dataclass(frozen=True)
class PredictRequest(Scoring, Rejecting, OnRay):
    model: Any = option(positional=True)  # run folder, model.safetensors, an exported .onnx or an OpenVINO export
    # folder (in Python also a loaded Predictor)
    inputs: Any = option(positional=True, nargs="+")  # image files, folders or glob patterns; or WebDataset-style
    # .tar shards (local, globs, {000..099} ranges, or any fsspec URL), read as a stream (in Python also PIL images
    # or bytes)
    top_k: int | None = None  # labels each answer ranks [default: 3]
    level: Literal["fine", "coarse", "both"] = "fine"  # with two-level labels: which level to predict
    device: str = "auto"  # cpu, cuda, mps or auto
    pretrained: bool = False  # with MODEL = timm:NAME: the published ImageNet classifier as it is (class names from timm)
    out: str | None = None  # --ray: write the answers to this .parquet file (one row per image) instead

    def __post_init__(self) -> None:
        Scoring.__post_init__(self)
        OnRay.__post_init__(self)
        _at_least(self.top_k, 1, "--top-k")
        if self.out is not None and not self.ray:
            raise UserError("--out is for --ray (Parquet); without it, --format json|csv prints the answers")
        if self.ray and self.pretrained:
            raise UserError("--ray loads the model file in each worker: give a run folder or model file")


@dataclass(frozen=True)
class SubmitRequest(Scoring, Rejecting, OnRay):
    model: Any = option(positional=True)  # run folder or model.safetensors
    test_dir: Any = option(positional=True)  # folder of test images (ID = file name without extension)
    out: str = "submission.csv"  # the CSV written (atomically)
    id_column: str = "ID"  # the header of the image-name column
    target_column: str = "TARGET"  # the header of the answer column
    target: Literal["index", "label"] = "index"  # class index (in the model's class order) or class name
    level: Literal["fine", "coarse", "both"] = "fine"  # with two-level labels: which level (both: TARGET_COARSE and
    # TARGET_FINE columns)
    form: Literal["auto", "tags", "onehot"] = option("auto", flags=("--format",))  # with several tags per image:
    # tags (the tags given, separated by spaces; the default) or onehot (a 0/1 column per tag)

    def __post_init__(self) -> None:
        Scoring.__post_init__(self)
        OnRay.__post_init__(self)


@dataclass(frozen=True)
class EvaluateRequest(Scoring):
    model: Any = option(positional=True)  # run folder or model.safetensors
    data: str | None = option(None, positional=True)  # image folder (default: the run's own data and splits.csv)
    labels: str | None = None  # another folder's labels as a CSV, as train reads it (default: its class or tag
    # subfolders)
    id_column: str | None = None  # the CSV column naming the image (default: detected)
    label_column: str | None = None  # the CSV column with the class, or a tagged model's list of tags (default:
    # detected)
    tag_columns: str | None = None  # a tagged model's 0/1 columns, one per tag: A,B,C or a range A:D
    split: Literal["test", "val", "train", "all"] = "test"  # which split of the run
    out: str | None = None  # output folder (default: <run>/eval/<split>/)
    data_map: bool = option(False, flags=("--map",))  # add a map of the split's embeddings (t-SNE), its mistakes
    # marked
    device: str = "auto"  # cpu, cuda, mps or auto

    def __post_init__(self) -> None:
        Scoring.__post_init__(self)
        if self.labels is None and (self.id_column or self.label_column or self.tag_columns):
            raise UserError("--id-column, --label-column and --tag-columns describe a --labels CSV: give it")


@dataclass(frozen=True)
class CheckRequest:
    data: str = option(positional=True)  # image folder (same layouts as train)
    labels: str | None = None  # Kaggle-style CSV (id/file column + label column), as train reads it
    id_column: str | None = None  # CSV column naming the image (default: detected)
    label_column: str | None = None  # CSV column holding the class (default: detected)
    label_columns: str | None = None  # two-level labels from the CSV: "coarse,fine" columns
    hierarchy: bool = False  # two-level labels: DATA/<coarse>/<fine>/*
    multi_label: bool = False  # several tags per image: a CSV column of tag lists (--label-column names it), 0/1
    # columns (--tag-columns), or copies of an image in several class folders
    tag_columns: str | None = None  # one 0/1 column per tag: A,B,C or a range A:D (implies --multi-label)
    val_split: float = TrainConfig.val_split  # share of each class held out for validation (as train would split)
    test_split: float = TrainConfig.test_split  # share of each class held out for the test (as train would split)
    seed: int = TrainConfig.seed  # seeds the split, as train's does
    workers: int = 0  # decoding processes (0: in this process)
    near_distance: int = NEAR_DISTANCE  # perceptual-hash bits (of 64) within which two images are near duplicates
    label_issues: bool = False  # also rank suspected label errors (cleanlab on out-of-fold probabilities of the
    # images' embeddings): label_issues.csv and a gallery in --out; implies --embeddings
    embeddings: bool = False  # also near-duplicates and leakage by embedding similarity (crops, re-encodes) and a
    # map of the data (t-SNE): near_duplicates.csv, data_map.png, check_report.html in --out
    model: str | None = None  # what embeds the images: a run folder or model file, or timm:NAME (default:
    # EfficientNet-Lite0's ImageNet backbone, installed with imgclass)
    near_cosine: float = NEAR_COSINE  # cosine similarity of embeddings at which two images are near duplicates
    out: str = "check_report"  # folder for the embedding checks' files

    def __post_init__(self) -> None:
        _at_least(self.workers, 0, "--workers")
        if not 0 <= self.near_distance <= 64:
            raise UserError("--near-distance is a number of bits between 0 and 64")
        if not -1.0 <= self.near_cosine <= 1.0:
            raise UserError("--near-cosine is a cosine similarity between -1 and 1")

    def split_options(self) -> dict[str, Any]:
        """The options that say how train would read and split this folder (check_dataset's keywords)."""
        return dict(labels=self.labels, id_column=self.id_column, label_column=self.label_column,
                    hierarchy=self.hierarchy, label_columns=self.label_columns, multi_label=self.multi_label,
                    tag_columns=self.tag_columns, val_split=self.val_split, test_split=self.test_split,
                    seed=self.seed, workers=self.workers, near_distance=self.near_distance)


@dataclass(frozen=True)
class EmbedRequest:
    model: Any = option(positional=True)  # run folder or model.safetensors, or with --pretrained a backbone
    # (timm:NAME)
    data: str = option(positional=True)  # image folder: a labelled one (as train reads it; labels are written) or
    # any folder
    out: str | None = None  # NAME.npy (writes NAME.npy, NAME.csv with path,label, NAME.json) or NAME.parquet (the
    # parquet extra); in Python it may be left out (nothing written)
    pretrained: bool = False  # MODEL is a published backbone used as it is, with its ImageNet weights (e.g.
    # timm:tf_efficientnet_lite0)
    cache: bool = True  # decode through the decoded-image cache (--no-cache: in memory)
    device: str = "auto"  # cpu, cuda, mps or auto


@dataclass(frozen=True)
class SimilarRequest:
    index: Any = option(positional=True)  # an embeddings file from `imgclass embed` (NAME.npy), or an image folder
    # to embed
    queries: Any = option(positional=True, nargs="+")  # query images: files, folders or glob patterns
    k: int = option(8, flags=("-k",))  # neighbours per query
    out: str | None = "similar.html"  # the HTML gallery (None in Python: none written)
    model: str | None = None  # for a folder: what embeds it (run folder, model file or timm:NAME; default
    # EfficientNet-Lite0's ImageNet backbone)
    device: str = "auto"  # cpu, cuda, mps or auto

    def __post_init__(self) -> None:
        _at_least(self.k, 1, "-k")


@dataclass(frozen=True)
class ExplainRequest:
    model: Any = option(positional=True)  # run folder or model.safetensors
    inputs: Any = option(positional=True, nargs="+")  # image files, folders or glob patterns
    label: str | None = option(None, flags=("--class",))  # explain this class instead of the predicted one
    method: Literal["gradcam", "eigencam"] = "gradcam"  # gradcam (gradient of the class score) or eigencam
    # (gradient-free)
    out: str = "explain"  # folder for the overlays
    device: str = "auto"  # cpu, cuda, mps or auto


@dataclass(frozen=True)
class CompareRequest:
    runs: tuple = option(positional=True, nargs="+")  # run folders
    html: str | None = None  # also write the table and the overlaid validation curves to this HTML file (the
    # curves also as a PNG beside it)
    sort: str | None = None  # order the runs by this column, e.g. val_accuracy (scores best first)
    report: str | None = option(None, metavar="DIR")  # write the summary across the runs here: report.md and
    # report.html (a TL;DR from the numbers, the table, the curves)


@dataclass(frozen=True)
class AppRequest:
    runs: str = option("runs", positional=True, nargs="?")  # the folder of runs to show (any depth: sweeps and tune
    # trials nest them) [default: runs]
    data: str | None = None  # the data folder, when the runs' config.yaml names one that is not where it was
    label_issues: str | None = option(None, metavar="CSV")  # suspects from `imgclass check --label-issues`
    # (label_issues.csv) for the label review, instead of finding them in the workbench
    host: str = "127.0.0.1"  # the address to listen on (another than this machine's is reachable by others)
    port: int = 8765  # the port to listen on
    open_browser: bool = option(False, flags=("--open",))  # open the URL in this machine's browser

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise UserError("--port is a number between 1 and 65535")


@dataclass(frozen=True)
class ExportRequest:
    model: Any = option(positional=True)  # run folder or model.safetensors
    format: Literal[FORMATS] = "onnx"  # onnx, torchscript; openvino (extra), tflite (extra), coreml (extra): for devices;
    # triton: a Triton model repository; hub: a folder with the weights, config.json, the ONNX file and a model card
    out: str | None = None  # output file or folder (default: next to the model file); hub and triton: a new folder


@dataclass(frozen=True)
class ModelsRequest:
    zoo: Literal["torchvision", "timm"] | None = None  # list a library's architectures instead
    pattern: str | None = option(None, flags=("--filter",))  # glob pattern, e.g. 'resnet*'
    pretrained: bool = False  # list the backbones whose pretrained weights are available offline now, and from where


@dataclass(frozen=True)
class CacheRequest:
    action: Literal["info", "clear"] = option(positional=True)  # info: the entries and their sizes; clear: remove
    older_than: str | None = option(None, metavar="AGE")  # clear: only entries unused for this long (e.g. 30d, 12h)
    directory: str | None = option(None, flags=("--dir",))  # the cache folder [default: IMGCLASS_CACHE_DIR or
    # ~/.cache/imgclass]


@dataclass(frozen=True)
class DemoRequest:
    out: str | None = None  # run folder (default: runs/demo-N)
    data_dir: str = option("demo-data/digits", cli=False)  # where the digits are written as PNGs


@dataclass(frozen=True, kw_only=True)
class TrainingVerb:
    """What train, tune, lr-find and augment-preview share besides the training options (TrainConfig's fields,
    kept in `options`)."""
    config: str | None = None  # YAML file with any of these options (the command line wins)
    options: dict = option(None, cli=False)  # TrainConfig fields given (the command line's training options)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", dict(self.options or {}))


@dataclass(frozen=True)
class TuneRequest(TrainingVerb):
    data: str = option(None, positional=True)  # image folder (same layouts as train)
    trials: int = 10  # trials for this process (several processes may share a study)
    sampler: Literal["tpe", "random", "grid"] = "tpe"  # how trials choose their settings
    pruner: Literal["median", "none"] | None = None  # stop trials trailing the median of earlier ones [default:
    # none for grid, else median]
    cv: int | None = option(None, metavar="K")  # K-fold cross-validation inside the training split: a trial
    # scores the mean of its K folds
    space: str | None = None  # YAML search space replacing the default (see docs/training.md)
    storage: str | None = None  # SQLAlchemy URL of the study [default: sqlite:///OUT/study.db]
    study: str | None = None  # study name [default: imgclass]

    def __post_init__(self) -> None:
        TrainingVerb.__post_init__(self)
        if self.data is None:
            raise UserError("tune needs DATA, the image folder")
        _at_least(self.trials, 1, "--trials")
        _at_least(self.cv, 2, "--cv")


@dataclass(frozen=True)
class LrFindRequest(TrainingVerb):
    data: str = option(None, positional=True)  # image folder (same layouts as train)
    plot: str = "lr_find.png"  # where to write the plot
    steps: int = 100  # learning rates tried (one step each)

    def __post_init__(self) -> None:
        TrainingVerb.__post_init__(self)
        if self.data is None:
            raise UserError("lr-find needs DATA, the image folder")
        _at_least(self.steps, 2, "--steps")


@dataclass(frozen=True)
class PreviewRequest(TrainingVerb):
    data: str = option(None, positional=True)  # image folder (same layouts as train)
    preview: str = "augment_preview.png"  # where to write the grid
    images: int = 8  # training images shown
    draws: int = 4  # augmented versions of each

    def __post_init__(self) -> None:
        TrainingVerb.__post_init__(self)
        if self.data is None:
            raise UserError("augment-preview needs DATA, the image folder")


@dataclass(frozen=True)
class TrainRequest(TrainingVerb):
    data: str | None = option(None, positional=True)  # image folder (DATA/<class>/*, DATA/train|val|test/<class>/*,
    # or with --labels)
    resume: str | None = option(None, metavar="RUN")  # continue an interrupted run from its last checkpoint
    sweep: str | None = option(None, metavar="SETTING=V1,V2,...")  # one run per value of one setting (in --out,
    # default runs/sweep-SETTING), then the compare summary; ';' separates values holding commas

    def __post_init__(self) -> None:
        TrainingVerb.__post_init__(self)
        if self.sweep and self.resume:
            raise UserError("--sweep starts new runs; --resume continues one: use one of them")


def paths(values: Any) -> list:
    """One input or several, as a list (a path, a PIL image or a bytes object is one input, not a sequence)."""
    return [values] if isinstance(values, (str, Path, bytes)) or hasattr(values, "getpixel") else list(values)
