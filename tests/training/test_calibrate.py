"""Temperature scaling: fitted on validation, it lowers ECE on an over-confident model without changing
the argmax; stored in the model file and applied by every command."""
import numpy as np
import pytest
import torch

import imgclass
from imgclass.evaluation.metrics import expected_calibration_error, uncalibrated
from imgclass.models.inference import predict_logits
from imgclass.training.calibrate import calibration_facts, fit_temperature

from helpers import FAST, make_class_folders


def overconfident(n=2000, classes=5, scale=4.0, seed=0):
    """Logits whose labels are drawn from softmax(z), reported as scale * z: over-confident by `scale`."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g) * 1.5
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z * scale, labels


def test_temperature_undoes_overconfidence_and_keeps_the_argmax():
    logits, labels = overconfident()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(4.0, rel=0.15)                       # recovers the scale the logits were inflated by
    facts = calibration_facts(logits, labels, t)
    assert facts["val_ece_after"] < facts["val_ece_before"] / 3 and facts["val_nll_after"] < facts["val_nll_before"]
    assert torch.equal((logits / t).argmax(1), logits.argmax(1))   # accuracy cannot change
    probs = torch.softmax(logits / t, 1).numpy()
    np.testing.assert_allclose(uncalibrated(probs, t), torch.softmax(logits, 1).numpy(), atol=1e-5)
    assert expected_calibration_error(labels.numpy(), probs) == pytest.approx(facts["val_ece_after"])


def test_training_stores_the_temperature_and_every_command_applies_it(tmp_path, imgclass_log):
    data = make_class_folders(tmp_path / "data", per_class=20)
    run = imgclass.train(data, out=str(tmp_path / "run"), **dict(FAST, epochs=3, evaluate=True))
    predictor = imgclass.load(run.dir, device="cpu")
    from imgclass.rundir import RunDir
    results = RunDir(run.dir).read_results()
    t = results["calibration"]["temperature"]
    assert predictor.temperature == t and predictor.header.calibration["temperature"] == t and t != 1.0
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    raw = predict_logits(predictor.model, x, predictor.pre, 6, torch.device("cpu"))
    np.testing.assert_allclose(predictor.probabilities(x).numpy(), torch.softmax(raw / t, 1).numpy(), atol=1e-6)
    ev = run.evaluations["val"]
    assert ev.metrics["ece"] == pytest.approx(results["calibration"]["val_ece_after"], abs=1e-6)
    assert ev.metrics["calibration"]["ece_uncalibrated"] == pytest.approx(results["calibration"]["val_ece_before"],
                                                                          abs=1e-4)
    assert "reliability_uncalibrated" in ev.figures
    assert any(m.startswith("calibration: softmax temperature") for _, m in imgclass_log)
    # --no-calibrate, and no validation split: temperature 1, nothing in the header
    for opts in (dict(calibrate=False), dict(val_split=0.0)):
        other = imgclass.train(data, out=str(tmp_path / f"r{len(opts)}{list(opts)[0]}"), **dict(FAST, **opts))
        header = imgclass.load(other.dir).header
        assert header.temperature == 1.0 and header.calibration is None
    assert any(level == "WARNING" and "left uncalibrated" in m for level, m in imgclass_log)
