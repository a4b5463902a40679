"""export --format hub: a folder that reloads (imgclass, and timm for a timm backbone) with the run's
probabilities, holds no pickle, and whose model card quotes the run's own numbers."""
import csv
import json
import re

import numpy as np
import pytest
import torch

import imgclass
from imgclass.cli import main

from helpers import make_class_folders


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    data = make_class_folders(root / "data", per_class=10)
    return imgclass.train(data, out=str(root / "run"), model="timm:resnet10t", img_size=32, epochs=2,
                          verbose=False, tensorboard=False)


def test_timm_hub_folder_reloads_everywhere(timm_run, tmp_path, capsys):
    out = tmp_path / "hub"
    assert main(["export", str(timm_run.dir), "--format", "hub", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "config.json", "figures", "imgclass.safetensors", "model.onnx", "model.safetensors"]
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt*"))          # no pickle anywhere
    run = imgclass.load(timm_run.dir, device="cpu")
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    expected = run.probabilities(x).numpy()
    np.testing.assert_allclose(imgclass.load(out).probabilities(x).numpy(), expected, atol=1e-6)
    import timm
    net = timm.create_model(f"local-dir:{out}", pretrained=True).eval()       # timm's own loader
    config = json.loads((out / "config.json").read_text())
    assert net.pretrained_cfg["label_names"] == run.classes
    with torch.no_grad():
        logits = net(run.pre.normalize(x))
    t = config["imgclass"]["inference"]["temperature"]
    assert t == run.temperature
    np.testing.assert_allclose(torch.softmax(logits / t, 1).numpy(), expected, atol=1e-5)
    import onnxruntime as ort
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"pixels": x.float().numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert main(["predict", str(out), str(next((timm_run.dir.parent / "data" / "cat").iterdir())),
                 "--format", "json"]) == 0


def test_model_card_numbers_equal_the_run(timm_run, tmp_path):
    out = tmp_path / "hub"
    from imgclass.exports.hub import export_hub
    export_hub(timm_run.dir, out)
    card = (out / "README.md").read_text()
    metrics = json.loads((timm_run.dir / "eval" / "test" / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "ece"):
        assert re.search(rf"\| {key} \| ([0-9.]+) \|", card).group(1) == f"{metrics[key]:.4f}"
    for c, v in metrics["per_class"].items():
        assert f"| {c} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |" in card
    counts = {}
    for row in csv.DictReader(open(timm_run.dir / "splits.csv")):
        counts.setdefault(row["label"], {}).setdefault(row["split"], 0)
        counts[row["label"]][row["split"]] += 1
    for c, per in counts.items():
        assert f"| {c} | {per.get('train', 0)} | {per.get('val', 0)} | {per.get('test', 0)} |" in card
    results = json.loads((timm_run.dir / "results.json").read_text())
    assert f"{results['epochs_run']} epochs," in card
    assert (f"kept are from epoch {results['best_epoch']}." if results["best_epoch"] else "kept are from the head stage") in card
    assert f"{imgclass.load(timm_run.dir).temperature:.4f}" in card
    assert f"below {imgclass.load(timm_run.dir).header.reject.threshold:.3f} is answered 'unknown'" in card
    assert (out / "figures" / "confusion_matrix.png").is_file() and "figures/confusion_matrix.png" in card


def test_other_models_and_a_used_folder(trained_run, tmp_path, capsys):
    out = tmp_path / "hub"
    from imgclass.exports.hub import export_hub
    export_hub(trained_run, out)
    assert not (out / "model.safetensors").exists()                  # not timm: imgclass's file only
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "imgclass" and config["classes"] == imgclass.load(trained_run).classes
    size = imgclass.load(trained_run).pre.img_size
    x = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    np.testing.assert_allclose(imgclass.load(out).probabilities(x).numpy(),
                               imgclass.load(trained_run).probabilities(x).numpy(), atol=1e-6)
    assert main(["export", str(trained_run), "--format", "hub", "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--format", "hub"]) == 2


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """A small evaluated run whose class names are Markdown and HTML."""
    root = tmp_path_factory.mktemp("odd")
    data = make_class_folders(root / "data", classes=("a|b", "<img src=x onerror=alert(1)>", "**bold**"),
                              per_class=10)
    return imgclass.train(data, out=str(root / "run"), model="cnn", model_args={"width": 8, "depth": 2}, img_size=8,
                          epochs=1, verbose=False, tensorboard=False, workers=1)


def test_the_card_escapes_names_and_copies_no_linked_file(odd_run, tmp_path):
    """A run folder received from someone else: a figure that is a link to a secret is not copied into the folder
    meant for upload; class names are plain text in the card."""
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    figure = odd_run.dir / "eval" / "test" / "figures" / "confusion_matrix.png"
    figure.unlink()
    figure.symlink_to(secret)
    out = tmp_path / "hub"
    assert main(["export", str(odd_run.dir), "--format", "hub", "--out", str(out)]) == 0
    assert not (out / "figures" / "confusion_matrix.png").exists()
    assert not any(b"PRIVATE KEY" in p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert (out / "figures" / "reliability.png").is_file()                   # the regular ones are copied
    card = (out / "README.md").read_text()
    assert "<img" not in card and "&lt;img" in card and "a\\|b" in card and "\\*\\*bold\\*\\*" in card


def test_a_kill_during_the_hub_export_leaves_no_folder(odd_run, tmp_path, monkeypatch):
    """The folder is built beside --out and renamed into place: a kill half-way leaves no --out folder that
    predict would accept, and no building folder."""
    from imgclass.exports import hub

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(hub, "model_card", killed)
    with pytest.raises(KeyboardInterrupt):
        hub.export_hub(odd_run.dir, tmp_path / "hub")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "hub").mkdir()                                               # an empty --out is taken
    assert sorted(p.name for p in hub.export_hub(odd_run.dir, tmp_path / "hub")[0].iterdir()) == [
        "README.md", "config.json", "figures", "imgclass.safetensors", "model.onnx"]

