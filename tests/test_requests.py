"""issue 39, item 3: each verb's options are one request (imgclass/requests.py), the command line is generated from
it, and the Python API takes the same request: the two cannot disagree."""
import dataclasses
import json

import pytest

import imgclass
from imgclass import api, cli
from imgclass.core.errors import UserError
from imgclass.core.options import from_args, to_argv
from imgclass.exports.settings import ExportSettings
from imgclass.requests import (AppRequest, CacheRequest, CheckRequest, CompareRequest, DemoRequest, EmbedRequest,
                               EvaluateRequest, ExplainRequest, ExportRequest, LrFindRequest, ModelsRequest,
                               PredictRequest, PreviewRequest, SimilarRequest, SubmitRequest, TrainRequest,
                               TuneRequest)
from imgclass.serving.batcher import Batching
from imgclass.serving.settings import ServeSettings

# One request per verb with every option away from its default (so each one's flag, type and parse are exercised).
EXAMPLES = {
    "app": AppRequest(runs="r", data="d", label_issues="li.csv", host="::1", port=9999, open_browser=True),
    "predict": PredictRequest(model="run", inputs=("a.png", "b/"), top_k=2, level="both", device="cpu",
                              out="x.parquet", ray=True, address="auto", ray_workers=3, reject=True,
                              reject_threshold=0.25, runtime="onnx", precision="float32", max_pixels=1000),
    "submit": SubmitRequest(model="run", test_dir="test", out="s.csv", id_column="id", target_column="label",
                            target="label", level="coarse", form="onehot", reject=True, runtime="torch",
                            precision="bf16", max_pixels=5),
    "evaluate": EvaluateRequest(model="run", data="other", labels="l.csv", id_column="f", label_column="y",
                                tag_columns="a:c", split="all", out="ev", data_map=True, device="cpu",
                                runtime="openvino"),
    "check": CheckRequest(data="d", labels="l.csv", id_column="i", label_column="c", label_columns="p,f",
                          hierarchy=True, multi_label=True, tag_columns="a,b", val_split=0.2, test_split=0.3,
                          seed=7, workers=2, near_distance=5, label_issues=True, embeddings=True, model="timm:x",
                          near_cosine=0.8, out="rep"),
    "embed": EmbedRequest(model="run", data="d", out="e.npy", pretrained=True, cache=False, device="cpu"),
    "similar": SimilarRequest(index="e.npy", queries=("q.png",), k=3, out="s.html", model="run", device="cpu"),
    "explain": ExplainRequest(model="run", inputs=("a.png",), label="cat", method="eigencam", out="x", device="cpu"),
    "compare": CompareRequest(runs=("r1", "r2"), html="c.html", sort="val_accuracy", report="rep"),
    "models": ModelsRequest(zoo="timm", pattern="res*", pretrained=True),
    "cache": CacheRequest(action="clear", older_than="30d", directory="/tmp/c"),
    "demo": DemoRequest(out="runs/d"),
    "tune": TuneRequest(data="d", trials=3, sampler="random", pruner="none", cv=3, space="s.yaml", storage="sqlite:///x",
                        study="s", config="c.yaml", options={"epochs": 2, "lr": 0.01, "model_args": {"width": 8}}),
    "lr-find": LrFindRequest(data="d", plot="p.png", steps=20, options={"batch_size": 8}),
    "augment-preview": PreviewRequest(data="d", preview="p.png", images=3, draws=2, options={"augment": "strong"}),
    "train": TrainRequest(data="d", resume="runs/r", config="c.yaml", options={"hflip": False, "img_size": "32,64"}),
}


def _parsed(verb: str, argv: list[str]):
    args = cli.build_parser().parse_args([verb, *argv])
    return args


def _argv(request) -> list[str]:
    argv = to_argv(request)
    for name, value in getattr(request, "options", {}).items():  # the training options, as TrainConfig's flags
        flag = "--" + name.replace("_", "-")
        argv += ([flag] if value is True else ["--no-" + flag[2:]] if value is False else
                 [flag, ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)])
    return argv


def test_every_verb_has_an_example():
    assert set(EXAMPLES) | {"export", "serve"} == set(cli.COMMANDS)


@pytest.mark.parametrize("verb", sorted(EXAMPLES))
def test_the_command_line_builds_the_request_the_api_takes(verb):
    """A request written as a command line parses back into the same request: every option, flag and type
    generated from the one class (a value the CLI could not say would fail here)."""
    request = EXAMPLES[verb]
    parsed = cli._request(type(request), _parsed(verb, _argv(request)))
    assert parsed == request


@pytest.mark.parametrize("verb", sorted(EXAMPLES))
def test_the_parser_holds_no_default_of_its_own(verb):
    """Without options, the command line's request is the class's defaults (no second copy of a default)."""
    request = EXAMPLES[verb]
    positional = [f.name for f in dataclasses.fields(request) if f.metadata.get("imgclass.cli", {}).get("positional")]
    minimal = dataclasses.replace(type(request)(**{n: getattr(request, n) for n in positional}))
    assert cli._request(type(request), _parsed(verb, to_argv(minimal))) == minimal


def test_export_and_serve_build_their_settings_alike():
    export = ExportRequest(model="run", format="openvino", out="x")
    settings = ExportSettings(quantize="int8", max_accuracy_drop=0.5, calibration_images=10, backend="openvino",
                              name="m")
    args = _parsed("export", to_argv(export) + to_argv(settings))
    assert from_args(ExportRequest, args) == export and from_args(ExportSettings, args) == settings
    serve = ServeSettings(host="0.0.0.0", port=9000, workers=2, runtime="onnx", max_upload_mb=2.5,
                          api_key_file="k", cors=("http://a",), allowed_hosts=("h",), max_batch=3, max_pixels=9,
                          max_decode_mb=50, max_concurrent=2, batching=Batching(4, 2.5, 10))
    assert from_args(ServeSettings, _parsed("serve", ["run", *to_argv(serve)])) == serve


def test_checks_live_in_the_request_and_answer_python_and_the_command_line_alike(capsys):
    """A value out of range is refused by the request, so by the API and the command line with the same words."""
    for verb, options, words in [("predict", {"top_k": 0}, "--top-k must be at least 1"),
                                 ("predict", {"max_pixels": 0}, "--max-image-pixels must be at least 1"),
                                 ("predict", {"out": "x.parquet"}, "--out is for --ray"),
                                 ("predict", {"address": "auto"}, "--address and --ray-workers are for --ray"),
                                 ("evaluate", {"id_column": "x"}, "describe a --labels CSV"),
                                 ("tune", {"trials": 0}, "--trials must be at least 1")]:
        cls = {"predict": PredictRequest, "evaluate": EvaluateRequest, "tune": TuneRequest}[verb]
        positional = {"predict": ("run", ["a.png"]), "evaluate": ("run",), "tune": ("data",)}[verb]
        with pytest.raises(UserError, match=words.replace("-", r"\-")):
            api.make_request(cls, positional, None, **options)
        flag = {"top_k": "--top-k", "max_pixels": "--max-image-pixels", "out": "--out", "address": "--address",
                "id_column": "--id-column", "trials": "--trials"}[next(iter(options))]
        argv = [verb, *[str(p) if not isinstance(p, list) else p[0] for p in positional], flag, str(*options.values())]
        assert cli.main(argv) == 2
        assert words in capsys.readouterr().err


def test_the_api_refuses_an_unknown_option_by_name():
    with pytest.raises(UserError, match="unknown option.*topk"):
        imgclass.predict("run", "a.png", topk=2)
    with pytest.raises(UserError, match="not both"):
        imgclass.predict("run", request=PredictRequest(model="run", inputs=("a.png",)))


def test_one_request_through_the_api_and_the_command_line_gives_the_same_answers(trained_run, tmp_path, capsys):
    """The same PredictRequest and SubmitRequest, fed to imgclass.predict/submit and to `imgclass predict/submit`:
    the same answers, the same file."""
    images = sorted((trained_run.parent / "data").rglob("*.png"))[:5]
    request = PredictRequest(model=str(trained_run), inputs=tuple(str(p) for p in images), top_k=2, runtime="torch",
                             precision="float32")
    from_api = json.loads(json.dumps(imgclass.predict(request=request)))
    assert cli.main(["predict", *to_argv(request), "--format", "json"]) == 0
    from_cli = json.loads(capsys.readouterr().out)
    assert [a["image"] for a in from_cli] == [a["image"] for a in from_api]
    for a, b in zip(from_cli, from_api):
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        assert [t["probability"] for t in a["top_k"]] == pytest.approx([t["probability"] for t in b["top_k"]], abs=1e-6)
    sub = SubmitRequest(model=str(trained_run), test_dir=str(images[0].parent), out=str(tmp_path / "api.csv"),
                        target="label", runtime="torch", precision="float32")
    imgclass.submit(request=sub)
    assert cli.main(["submit", *to_argv(dataclasses.replace(sub, out=str(tmp_path / "cli.csv")))]) == 0
    assert (tmp_path / "api.csv").read_text() == (tmp_path / "cli.csv").read_text()


def test_help_texts_are_the_fields_own_comments():
    """A field's help is its comment and the comment-only lines under it, never the section heading that follows
    (`# --- images ---` was appended to --seed's help)."""
    from imgclass.core.options import field_help
    from imgclass.training.config import TrainConfig
    helps = field_help(TrainConfig)
    assert helps["seed"] == "seeds the split, initialisation, shuffling, augmentation and dropout"
    assert not [name for name, text in helps.items() if "---" in text]
    assert field_help(PredictRequest)["runtime"].endswith("openvino needs the openvino extra")  # from its base
