"""Experiment tracking (issue 31, item 3): `--track mlflow` and `--track wandb` runs read back from their
stores through their own clients, with every epoch's metrics, the final metrics, tags and artifacts; a failing
tracking server costs a warning, never the run."""
import csv
import glob
import struct
import time

import pytest

import imgclass

from helpers import FAST, make_class_folders


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("track") / "data", per_class=8)


def epochs_of(run_dir):
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_mlflow_gets_every_epoch_the_results_and_the_artifacts(data, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = imgclass.train(data, out=str(tmp_path / "run"), track="mlflow", **dict(FAST, epochs=3, evaluate=True))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("imgclass")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    assert found.data.params["epochs"] == "3" and found.data.params["model_args.width"] == "8"
    history = client.get_metric_history(found.info.run_id, "val_acc")
    rows = epochs_of(run.dir)
    assert [m.step for m in history] == [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx([float(r["val_acc"]) for r in rows], abs=1e-5)
    assert found.data.metrics["test_accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])
    assert found.data.tags["weights.origin"] == "none (from scratch)"
    assert found.data.tags["data.classes"] == "3" and int(found.data.tags["data.train_images"]) > 0
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"model.safetensors", "config.yaml", "metrics.csv", "results.json", "eval"} <= artifacts
    reports = {a.path for a in client.list_artifacts(found.info.run_id, "eval/test")}
    assert "eval/test/report.html" in reports
    local = client.download_artifacts(found.info.run_id, "model.safetensors", str(tmp_path / "back"))
    assert open(local, "rb").read() == (run.dir / "model.safetensors").read_bytes()   # the same file


def test_a_failed_run_is_marked_failed_with_the_epochs_it_sent(data, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    class FailsAtEpoch2(imgclass.Callback):
        def after_epoch(self, t):
            if t.epoch == 2:
                raise OSError("No space left on device")
    with pytest.raises(OSError, match="No space left"):
        imgclass.train(data, out=str(tmp_path / "run"), track="mlflow", callbacks=[FailsAtEpoch2()],
                       **dict(FAST, epochs=3))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("imgclass").experiment_id])
    assert found.info.status == "FAILED" and found.info.end_time is not None      # not left RUNNING
    assert [m.step for m in client.get_metric_history(found.info.run_id, "val_acc")] == [1]
    assert mlflow.active_run() is None


def test_tune_trials_are_nested_under_the_study(data, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    imgclass.tune(data, trials=2, out=str(tmp_path / "tune"), study="s1", track="mlflow", pruner="none",
                  **dict(FAST, epochs=1))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("imgclass").experiment_id])
    parent = [r for r in runs if r.info.run_name == "s1"]
    assert len(parent) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1"]


def test_a_failing_tracking_server_costs_a_warning_not_the_run(data, tmp_path, monkeypatch, imgclass_log):
    pytest.importorskip("mlflow", reason="the mlflow extra")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")        # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    run = imgclass.train(data, out=str(tmp_path / "run"), track="mlflow", **dict(FAST, epochs=1))
    assert (run.dir / "model.safetensors").is_file()
    warnings = [m for level, m in imgclass_log if level == "WARNING" and "--track mlflow" in m]
    assert len(warnings) == 1 and "nothing more is sent" in warnings[0]


def wandb_records(path):
    """W&B's own record messages (wandb_internal_pb2.Record) from an offline run's .wandb file. The file is a
    LevelDB-style log: a 7-byte header (':W&B', magic, version), then 32 KiB blocks of chunks (CRC32, length,
    type FULL=1/FIRST=2/MIDDLE=3/LAST=4). wandb 0.31 reads it in its Go core only, so the framing is read here;
    the messages are parsed by wandb's own protobuf classes."""
    from wandb.proto import wandb_internal_pb2
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def finished_records(path, wait: float = 60.0):
    """The records once the file holds the run's exit record, its last. wandb's core process writes the file; under
    load (two test processes on 2 cores) a read right after `run.finish()` returned once found no history in it."""
    deadline = time.monotonic() + wait
    while True:
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def key_of(item) -> str:
    """A history or summary item's name: its key, or its nested key's parts joined."""
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_run_holds_every_epoch_the_summary_and_the_model(data, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra")
    import json
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = imgclass.train(data, out=str(tmp_path / "run"), track="wandb", **dict(FAST, epochs=3, evaluate=True))
    (log_file,) = glob.glob(str(run.dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    history, summary, artifacts = [], {}, []
    for record in finished_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({key_of(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({key_of(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "artifact":
            artifacts.append((record.artifact.name, {m.path for m in record.artifact.manifest.contents}))
    rows = epochs_of(run.dir)
    assert [h["_step"] for h in history] == [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [h["val_acc"] for h in history] == pytest.approx([float(r["val_acc"]) for r in rows], abs=1e-5)
    assert summary["test_accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])
    assert summary["weights.origin"] == "none (from scratch)"
    ((name, files),) = artifacts
    assert name == "model-run" and {"model.safetensors", "eval/test/report.html"} <= files
