"""`imgclass embed`: the vectors are the features training computes, the files round-trip and refuse damage."""
import json

import numpy as np
import pytest
import torch

import imgclass
from imgclass.core.errors import UserError
from imgclass.prediction.embed import Embeddings

from helpers import make_class_folders


def test_embed_of_a_model_equals_the_features_its_head_stage_trained_on(tmp_path, monkeypatch):
    """A run that keeps its head stage's model (--finetune head): its backbone is the ImageNet one the head stage
    computed features with, so `embed` must give those features, image by image."""
    import imgclass.training.run as run_module
    seen = []
    original = run_module.compute_features

    def recording(model, images, pre, batch_size, device, bf16=False):
        feats = original(model, images, pre, batch_size, device, bf16)
        seen.append((images.clone(), feats))
        return feats
    monkeypatch.setattr(run_module, "compute_features", recording)
    data = make_class_folders(tmp_path / "data", per_class=6)
    run = imgclass.train(data, out=str(tmp_path / "run"), model="timm:tf_efficientnet_lite0", pretrained=True,
                         finetune="head", img_size=32, head_epochs=1, epochs=1, batch_size=8, precision="fp32",
                         tensorboard=False, verbose=False, workers=1, evaluate=False)
    assert seen, "the head stage computed no features"
    emb = imgclass.embed(run.dir, data)
    assert len(emb) == 18 and emb.vectors.shape == (18, 1280) and set(emb.labels) == {"cat", "dog", "fish"}
    train_rows = [r.split(",") for r in (run.dir / "splits.csv").read_text().splitlines()[1:]]
    train_paths = [p for p, _, s in train_rows if s == "train"]
    feats = seen[0][1]
    assert len(feats) == len(train_paths)
    order = [emb.paths.index(p) for p in train_paths]
    np.testing.assert_allclose(emb.vectors[order], feats.numpy(), rtol=1e-4, atol=1e-5)


def test_embeddings_files_round_trip_and_refuse_damage(trained_run, tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=4)
    (data / "cat" / "broken.png").write_bytes(b"not an image")
    emb = imgclass.embed(trained_run, data, out=tmp_path / "emb.npy")
    assert len(emb) == 12 and [p for p, _ in emb.skipped] == ["cat/broken.png"]
    assert {p.name for p in tmp_path.iterdir()} >= {"emb.npy", "emb.csv", "emb.json"}
    back = Embeddings.load(tmp_path / "emb.csv")
    assert np.array_equal(back.vectors, emb.vectors) and back.paths == emb.paths and back.labels == emb.labels
    assert back.source == emb.source and back.preprocessing == emb.preprocessing
    rows = (tmp_path / "emb.csv").read_text()
    (tmp_path / "emb.csv").write_text(rows.replace("cat/img0.png", "../../etc/img0.png"))
    with pytest.raises(UserError, match="not the files"):  # the header's digests name other files
        Embeddings.load(tmp_path / "emb.npy")
    meta = json.loads((tmp_path / "emb.json").read_text())
    (tmp_path / "emb.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "sha256"}))
    with pytest.raises(UserError, match="outside the folder"):  # without digests (an older file): still checked
        Embeddings.load(tmp_path / "emb.npy")
    (tmp_path / "emb.csv").write_text(rows)
    (tmp_path / "emb.json").write_text(json.dumps({**meta, "n": 11, "sha256": {}}))
    with pytest.raises(UserError, match="do not agree"):
        Embeddings.load(tmp_path / "emb.npy")


def test_a_re_embed_killed_half_way_is_refused_not_read_with_the_old_header(trained_run, tmp_path):
    """issue 40, item 11: embedding again with another model and being killed after the new .npy (before the new
    .json) left new vectors beside the old header with the same row count: queries were embedded with the old
    header's model without a word. The header holds the digests of the files written with it."""
    data = make_class_folders(tmp_path / "data", per_class=3)
    first = imgclass.embed(trained_run, data, out=tmp_path / "emb.npy")
    old_json = (tmp_path / "emb.json").read_bytes()
    other = Embeddings(first.vectors[:, ::-1].copy(), first.paths, first.labels, first.root, "another-model.safetensors",
                       False, first.preprocessing, first.skipped)
    other.save(tmp_path / "emb.npy")
    (tmp_path / "emb.json").write_bytes(old_json)  # as a kill before the last file would leave them
    with pytest.raises(UserError, match="embed again"):
        Embeddings.load(tmp_path / "emb.npy")


def test_a_parquet_file_gets_the_same_checks(trained_run, tmp_path):
    """issue 40, item 6: the Parquet reader skipped the .npy reader's checks (paths outside the folder)."""
    pytest.importorskip("pyarrow")
    emb = imgclass.embed(trained_run, make_class_folders(tmp_path / "data", per_class=2))
    bad = Embeddings(emb.vectors, ("../../etc/passwd",) + emb.paths[1:], emb.labels, emb.root, emb.source,
                     emb.pretrained, emb.preprocessing, emb.skipped)
    bad.save(tmp_path / "e.parquet")
    with pytest.raises(UserError, match="outside the folder"):
        Embeddings.load(tmp_path / "e.parquet")


def test_embed_a_folder_without_labels_and_the_api_refusals(trained_run, tmp_path):
    folder = make_class_folders(tmp_path / "flat", classes=("x",), per_class=3) / "x"
    emb = imgclass.embed(trained_run, folder)
    assert len(emb) == 3 and emb.labels == ("", "", "")
    with pytest.raises(UserError, match="--pretrained"):
        imgclass.embed("timm:tf_efficientnet_lite0", folder)
    with pytest.raises(UserError, match="timm backbone"):
        imgclass.embed("resnet", folder, pretrained=True)


def test_parquet_is_an_extra(trained_run, tmp_path):
    emb = imgclass.embed(trained_run, make_class_folders(tmp_path / "data", per_class=2))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="parquet extra"):
            emb.save(tmp_path / "e.parquet")
        return
    emb.save(tmp_path / "e.parquet")
    back = Embeddings.load(tmp_path / "e.parquet")
    assert np.array_equal(back.vectors, emb.vectors) and back.paths == emb.paths and back.labels == emb.labels


def test_embed_features_equal_compute_features(trained_run, tmp_path):
    """The CLI verb writes what the library computes: same vectors for the same images."""
    from imgclass.cli import main
    from imgclass.data.images import load_split
    from imgclass.models.inference import compute_features
    data = make_class_folders(tmp_path / "data", per_class=3)
    assert main(["embed", str(trained_run), str(data), "--out", str(tmp_path / "e.npy")]) == 0
    emb = Embeddings.load(tmp_path / "e.npy")
    predictor = imgclass.load(trained_run)
    images = load_split(data, [(p, 0) for p in emb.paths], predictor.pre)
    want = compute_features(predictor.model, images.images, predictor.pre, 8, torch.device("cpu"))
    np.testing.assert_allclose(emb.vectors, want.numpy(), rtol=1e-5, atol=1e-6)
