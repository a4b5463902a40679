"""CLI smoke tests at tiny sizes for every verb, and one-line errors with exit code 2."""
import csv
import json
import subprocess
import sys

import pytest

from imgclass.cli import main

from helpers import make_class_folders, make_labels_csv, make_split_folders

TINY = ["--model", "cnn", "--model-args", "width=8,depth=2", "--img-size", "8", "--epochs", "1",
        "--batch-size", "8", "--no-tensorboard", "--no-verbose", "--workers", "1", "--no-evaluate"]


def test_train_predict_submit_models(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run)] + TINY) == 0
    out = capsys.readouterr().out
    assert "train accuracy" in out and "val accuracy" in out and "test accuracy" in out

    assert main(["predict", str(run), str(data / "cat"), "--format", "json", "--top-k", "2"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 8 and all(len(r["top_k"]) == 2 for r in results)

    assert main(["predict", str(run / "model.safetensors"), str(data / "dog" / "img*.png"), "--format", "csv"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0][:3] == ["image", "label1", "probability1"] and len(rows) == 9

    assert main(["predict", str(run), str(data / "fish" / "img0.png")]) == 0
    table = capsys.readouterr().out
    image_column = "".join(line.split("│")[1].strip() for line in table.splitlines() if line.count("│") > 2)
    assert image_column.endswith("img0.png")  # the whole path, folded over lines when the terminal is narrow
    assert "fish" in table or "cat" in table or "dog" in table

    assert main(["submit", str(run), str(data / "cat"), "--out", str(tmp_path / "s.csv"), "--target", "label"]) == 0
    assert "wrote 8 rows" in capsys.readouterr().out

    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("mlp", "cnn", "resnet"))
    assert main(["models", "--zoo", "timm", "--filter", "resnet1*"]) == 0
    assert "timm:resnet18" in capsys.readouterr().out.split()


def test_train_with_labels_csv_and_split_folders(tmp_path, capsys):
    csv_path = make_labels_csv(tmp_path / "k")
    assert main(["train", str(tmp_path / "k" / "images"), "--labels", str(csv_path), "--out",
                 str(tmp_path / "r1")] + TINY) == 0
    data = make_split_folders(tmp_path / "s", splits=("train", "validation"))
    assert main(["train", str(data), "--out", str(tmp_path / "r2")] + TINY) == 0


@pytest.mark.parametrize("make,args,msg", [
    (None, ["train", "{tmp}/missing"], "data path does not exist"),
    ("empty", ["train", "{tmp}/d"], "no images found"),
    ("one", ["train", "{tmp}/d"], "at least 2 classes"),
    ("csv", ["train", "{tmp}/d", "--labels", "{tmp}/bad.csv"], "match an image"),
    ("two", ["train", "{tmp}/d", "--model", "vgg99"], "unknown model 'vgg99'"),
    ("two", ["train", "{tmp}/d", "--config", "{tmp}/c.yaml"], "unknown config key 'epohcs'"),
    ("two", ["train", "{tmp}/d", "--epochs", "x"], "invalid int value"),
    ("two", ["train", "{tmp}/d", "--bogus-flag"], "unrecognized arguments"),
    (None, ["predict", "{tmp}/nothing", "x.png"], "model not found"),
    (None, ["train", "--resume", "{tmp}"], "cannot resume"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, make, args, msg):
    if make == "empty":
        (tmp_path / "d").mkdir()
    elif make == "one":
        make_class_folders(tmp_path / "d", classes=("x",), per_class=2)
    elif make in ("two", "csv"):
        make_class_folders(tmp_path / "d", classes=("x", "y"), per_class=2)
        (tmp_path / "bad.csv").write_text("id,label\nzzz,x\n")
        (tmp_path / "c.yaml").write_text("epohcs: 3\n")
    code = main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "imgclass", "train", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"imgclass: error: data path does not exist: {tmp_path / 'nope'}"


def test_help_lists_every_verb(capsys):
    from imgclass.cli import COMMANDS
    assert sorted(COMMANDS) == sorted(VERBS)


VERBS = ["train", "tune", "lr-find", "augment-preview", "explain", "predict", "submit", "check", "evaluate", "compare",
         "export", "serve", "models", "demo", "cache", "embed", "similar", "app"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_prints_its_help(verb, capsys):
    # the help texts come from TrainConfig's comments; a "%" in one once broke `imgclass train --help`
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: imgclass {verb}")
    if verb == "train":
        assert "onecycle (linear up 25%, linear down)" in " ".join(out.split())


HEAVY = ("torch", "timm", "onnx", "onnxruntime", "sklearn", "matplotlib", "fastapi")


def test_help_imports_nothing_heavy():
    """Building the parser and printing any verb's help loads none of the heavy libraries (issue 39: `imgclass
    --help` had grown from 0.2 s to 2.2 s on a float32-only AMD machine by importing torch for export's options)."""
    import subprocess
    import sys
    script = f"""
import contextlib, io, sys
from imgclass.cli import COMMANDS, main
for argv in [["--help"]] + [[verb, "--help"] for verb in COMMANDS]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv)
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_serve_defaults_are_the_settings_defaults():
    """serve's defaults are written once (serving/settings.py): the parser holds none of its own, so a command
    line without options is ServeSettings() itself."""
    from imgclass.cli import build_parser
    from imgclass.core.options import from_args
    from imgclass.serving.settings import ServeSettings
    args = build_parser().parse_args(["serve", "run"])
    assert vars(args).keys() <= {"verb", "model", "api_key"}
    assert from_args(ServeSettings, args) == ServeSettings()


# What a verb may import besides imgclass.api: helpers that only print or parse (no work of the library).
PRESENTATION = {"core.version.STARTED", "training.config.parse_duration", "training.run.summary_lines",
                "evaluation.compare.compare_text", "tuning.tune.summary_table", "data.check_report.print_check",
                "tuning.sweep.parse_sweep", "models.get_spec", "serving.settings.ServeSettings",
                "exports.settings.ExportSettings"}


def test_every_verb_calls_the_api_and_nothing_else_of_the_library():
    """issue 25, item 7: the CLI is thin. Each verb's function (COMMANDS) calls imgclass.api, and imports from
    the library only the presentation helpers above."""
    import ast
    import inspect

    from imgclass import cli
    for verb, (_, _, run) in cli.COMMANDS.items():
        tree = ast.parse(inspect.getsource(run))
        calls = {node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", None) == "api"}
        imported = {f"{node.module}.{alias.name}" for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.level and node.module for alias in node.names}
        assert calls, f"{verb} calls no imgclass.api function"
        assert imported <= PRESENTATION, f"{verb} imports {sorted(imported - PRESENTATION)}"


def test_serve_options_are_one_settings_object(monkeypatch):
    from imgclass import api
    from imgclass.serving.settings import ServeSettings
    seen = []
    monkeypatch.setattr(api, "serve", lambda model, settings: seen.append((model, settings)))
    assert main(["serve", "run", "--port", "9001", "--cors", "http://a.example", "--max-batch-size", "4"]) == 0
    (model, settings), = seen
    assert model == "run" and isinstance(settings, ServeSettings) and settings.host == "127.0.0.1"
    assert settings.port == 9001 and settings.cors == ("http://a.example",) and settings.batching.max_batch_size == 4
    assert main(["serve", "run", "--workers", "0"]) == 2 and len(seen) == 1
