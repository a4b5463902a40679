""""None of these": the threshold set on validation is stored in the model file, and a rejected image answers
unknown in predict, submit and the service alike."""
import csv
import dataclasses

import numpy as np
import pytest

import imgclass
from imgclass.cli import main
from imgclass.errors import UserError
from imgclass.modelfile import load_model, save_model
from imgclass.models.reject import Rejection
from imgclass.serving.app import create_app

from helpers import local_client, png_bytes


def test_training_stores_a_threshold_that_accepts_95_percent_of_validation(trained_run):
    predictor = imgclass.load(trained_run)
    rule = predictor.header.reject
    assert rule is not None and rule.acceptance == 0.95 and rule.n > 0
    with open(trained_run / "splits.csv", newline="") as fh:
        val = [trained_run.parent / "data" / r["path"] for r in csv.DictReader(fh) if r["split"] == "val"]
    probs, _ = predictor.predict_proba(val)
    assert rule.n == len(val)
    assert (probs.max(1) >= rule.threshold - 1e-6).mean() >= 0.95  # accepted: at least the asked share
    assert (probs.max(1) < rule.threshold + 1e-6).any()  # and the threshold is one of their scores, not below all


def test_fit_keeps_the_asked_share():
    probs = np.stack([np.linspace(0.5, 1.0, 100), 1 - np.linspace(0.5, 1.0, 100)], 1)
    rule = Rejection.fit(probs, 0.9)
    assert (probs.max(1) >= rule.threshold).mean() == 0.9


@pytest.fixture
def strict_model(trained_run, tmp_path):
    """The trained model with its threshold between the scores of two images: (model file, the accepted image, the
    rejected one)."""
    from PIL import Image
    model, header = load_model(trained_run / "model.safetensors")
    first, second = tmp_path / "test" / "1.png", tmp_path / "test" / "2.png"
    first.parent.mkdir()
    first.write_bytes(png_bytes(0))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(second)
    scores = [imgclass.predict(trained_run, p, top_k=1, runtime="torch", precision="float32")[0]["top_k"][0]
              ["probability"] for p in (first, second)]
    assert abs(scores[0] - scores[1]) > 1e-3
    path = tmp_path / "strict.safetensors"
    save_model(path, model, dataclasses.replace(header, reject=Rejection(sum(scores) / 2, 0.95, n=10)))
    return (path, first, second) if scores[0] > scores[1] else (path, second, first)


def test_a_rejected_image_answers_unknown_in_predict_submit_and_serve(strict_model, tmp_path, capsys):
    path, sure, unsure = strict_model
    fp32 = dict(runtime="torch", precision="float32")
    answers = imgclass.predict(path, [sure, unsure], reject=True, **fp32)
    assert [a["unknown"] for a in answers] == [False, True]
    assert answers[1]["score"] == pytest.approx(answers[1]["top_k"][0]["probability"], abs=1e-6)
    assert "unknown" not in imgclass.predict(path, sure, **fp32)[0]  # off unless asked
    out = imgclass.submit(path, sure.parent, tmp_path / "sub.csv", target="label", reject=True, **fp32)
    rows = {r[0]: r[1] for r in list(csv.reader(out.open()))[1:]}
    assert rows[unsure.stem] == "unknown" and rows[sure.stem] in ("cat", "dog", "fish")
    client = local_client(create_app(path, runtime="torch", precision="float32"))
    served = [client.post("/predict", files={"file": (p.name, p.read_bytes(), "image/png")},
                          params={"reject": "true"}).json() for p in (sure, unsure)]
    assert [s["unknown"] for s in served] == [False, True]
    assert served[1]["score"] == pytest.approx(answers[1]["score"], abs=1e-6)
    batch = client.post("/predict/batch?reject=true", files=[("files", (p.name, p.read_bytes(), "image/png"))
                                                             for p in (sure, unsure)]).json()["results"]
    assert [b["unknown"] for b in batch] == [False, True]
    assert main(["predict", str(path), str(unsure), "--reject", "--runtime", "torch", "--precision", "float32"]) == 0
    assert "unknown" in capsys.readouterr().out
    assert main(["submit", str(path), str(sure.parent), "--out", str(tmp_path / "s2.csv"), "--reject",
                 "--runtime", "torch", "--precision", "float32"]) == 0
    assert {r[0]: r[1] for r in list(csv.reader(open(tmp_path / "s2.csv")))[1:]}[unsure.stem] == "-1"


def test_reject_is_refused_where_it_cannot_apply(trained_run, tmp_path):
    model, header = load_model(trained_run / "model.safetensors")
    bare = tmp_path / "bare.safetensors"
    save_model(bare, model, dataclasses.replace(header, reject=None))
    with pytest.raises(UserError, match="no rejection threshold"):
        imgclass.load(bare).rejection(True)
    client = local_client(create_app(bare, runtime="torch", precision="float32"))
    r = client.post("/predict?reject=true", files={"file": ("x.png", png_bytes(0), "image/png")})
    assert r.status_code == 400 and "no rejection threshold" in r.json()["detail"]
    given = imgclass.load(bare).rejection(0.5)
    assert given.threshold == 0.5 and given.n == 0
    with pytest.raises(UserError, match="probability"):
        imgclass.load(bare).rejection(1.5)
