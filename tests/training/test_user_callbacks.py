"""Your own callbacks (issue 31, item 4): passed from Python or named on the command line, they receive every
event; a bad name is refused before any work."""
import json
from pathlib import Path

import pytest

import imgclass
from imgclass.cli import main

from helpers import FAST, make_class_folders

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "callbacks" / "jsonl_metrics.py"
EPOCH_EVENTS = ["before_epoch", "after_step", "before_validate", "after_epoch"]


class Recorder(imgclass.Callback):
    def __init__(self):
        self.events, self.run = [], None

    def before_fit(self, t): self.events.append("before_fit")
    def before_epoch(self, t): self.events.append("before_epoch")
    def after_step(self, t): self.events.append("after_step")
    def before_validate(self, t): self.events.append("before_validate")
    def after_epoch(self, t): self.events.append("after_epoch")
    def after_fit(self, t): self.events.append("after_fit")

    def after_run(self, run):
        self.events.append("after_run")
        self.run = run

    def run_failed(self, error):
        self.events.append("run_failed")
        self.error = error


class FailsAtEpoch(imgclass.Callback):
    """An error in the middle of a run (a full disk, a bug in a callback): the run ends by it."""
    def __init__(self, epoch: int):
        self.epoch = epoch

    def after_epoch(self, t):
        if t.epoch == self.epoch:
            raise RuntimeError(f"failed at epoch {t.epoch}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("cb") / "data", per_class=8)


def collapse(events):
    """Runs of after_step shown once: the shape of the sequence."""
    return [e for i, e in enumerate(events) if not (e == "after_step" and i and events[i - 1] == "after_step")]


def test_a_python_callback_receives_every_event(data, tmp_path):
    recorder = Recorder()
    run = imgclass.train(data, out=str(tmp_path / "run"), callbacks=[recorder], **dict(FAST, epochs=2))
    assert collapse(recorder.events) == ["before_fit"] + EPOCH_EVENTS * 2 + ["after_fit", "after_run"]
    per_epoch = -(-run.metrics["train"]["n"] // run.config.batch_size)
    assert recorder.events.count("after_step") == 2 * per_epoch                   # every step
    assert recorder.run is not None and recorder.run.dir == run.dir and recorder.run.metrics == run.metrics


def test_a_run_that_fails_tells_the_callbacks_and_still_raises(data, tmp_path):
    recorder = Recorder()
    with pytest.raises(RuntimeError, match="failed at epoch 2"):
        imgclass.train(data, out=str(tmp_path / "run"), callbacks=[FailsAtEpoch(2), recorder], **dict(FAST, epochs=3))
    assert collapse(recorder.events) == ["before_fit"] + EPOCH_EVENTS + EPOCH_EVENTS[:-1] + ["run_failed"]
    assert str(recorder.error) == "failed at epoch 2" and recorder.run is None


def test_the_command_line_example_writes_every_event_and_the_epochs_rows(data, tmp_path):
    out = tmp_path / "run"
    args = ["train", str(data), "--out", str(out), "--model", "cnn", "--model-args", "width=8,depth=2",
            "--img-size", "8", "--epochs", "2", "--batch-size", "8", "--no-verbose", "--no-tensorboard",
            "--callback", f"{EXAMPLE}:MetricsToJsonLines"]
    assert main(args) == 0
    lines = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    kinds = [line["event"] for line in lines]
    assert set(kinds) == {"before_fit", "before_epoch", "after_step", "before_validate", "after_epoch",
                          "after_fit", "after_run"}
    rows = [{k: v for k, v in line.items() if k != "event"} for line in lines if line["event"] == "after_epoch"]
    import csv
    with (out / "metrics.csv").open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == [int(r["epoch"]) for r in csv_rows]
    assert [r["train_loss"] for r in rows] == pytest.approx([float(r["train_loss"]) for r in csv_rows], abs=1e-5)
    assert lines[-1]["event"] == "after_run" and lines[-1]["metrics"]["test"]["n"] > 0
    assert "MetricsToJsonLines" in (out / "config.yaml").read_text()     # recorded: --resume builds it again


def test_a_module_in_the_current_folder_by_name(data, tmp_path, monkeypatch):
    (tmp_path / "my_hooks.py").write_text(
        "import imgclass\nSEEN = []\nclass Hook(imgclass.Callback):\n"
        "    def after_epoch(self, t):\n        SEEN.append(t.epoch)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    imgclass.train(data, out=str(tmp_path / "run"), callback="my_hooks:Hook", **dict(FAST, epochs=2))
    import my_hooks
    assert my_hooks.SEEN == [1, 2]


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "expected module:Class"),
    ("json:JSONDecoder", "is not a subclass of imgclass.Callback"),
    ("surely_no_such_module_x:Hook", "cannot import surely_no_such_module_x"),
    ("missing/file.py:Hook", "not found"),
])
def test_a_bad_callback_is_refused_before_any_work(data, tmp_path, spec, message, capsys):
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--callback", spec, "--no-verbose"]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "model.safetensors").exists() and not (out / "metrics.csv").exists()


def test_a_callback_named_by_a_config_file_is_said_and_leaves_sys_path_as_it_was(tmp_path, monkeypatch,
                                                                                    imgclass_log):
    """issue 40, item 5: a `callback:` in a config file ran code with no log line, and the module:Class form left the
    current folder first on sys.path for the rest of the process (a file there could shadow later imports)."""
    import sys

    from imgclass.training.integrations.user_callbacks import load_callbacks
    (tmp_path / "cwd_hooks.py").write_text("import imgclass\nclass Hook(imgclass.Callback):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    hooks = load_callbacks("cwd_hooks:Hook")
    assert type(hooks[0]).__name__ == "Hook" and sys.path == before
    assert any("running the code of cwd_hooks" in message for _, message in imgclass_log)
