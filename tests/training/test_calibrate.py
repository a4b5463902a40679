"""Temperature scaling: fitted on validation, it lowers ECE on an over-confident model without changing
the argmax; stored in the model file and applied by every command."""
import numpy as np
import pytest
import torch

import imgclass
from imgclass.evaluation.metrics import expected_calibration_error, uncalibrated
from imgclass.models.inference import predict_logits
from imgclass.models.calibration import calibration_facts, fit_temperature

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
    from imgclass.core.rundir import RunDir
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


def test_platt_per_tag_equals_weighted_logistic_regression_and_keeps_the_ranking():
    """Platt scaling per tag: the (a, b) of scikit-learn's logistic regression on the logit, with Platt's smoothed
    targets given as sample weights; it undoes an over-confident tag's inflation, leaves each tag's AP as it was,
    and a tag without a validation positive keeps the identity."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from imgclass.models.tasks import MultiLabel
    from imgclass.models.calibration import fit_tag_calibration, tag_calibration_facts

    g = torch.Generator().manual_seed(0)
    z = torch.randn(3000, 3, generator=g) * 1.5 + torch.tensor([-1.0, 0.0, -3.0])
    labels = (torch.rand(3000, 3, generator=g) < torch.sigmoid(z)).long()
    labels[:, 2] = 0                                                   # the third tag: no positive
    logits = z.double() * 4.0                             # reported over-confident by 4 (float64: no sigmoid ties)
    scale, shift = fit_tag_calibration(logits, labels)
    assert scale[0] == pytest.approx(0.25, rel=0.15) and scale[1] == pytest.approx(0.25, rel=0.15)
    assert (scale[2], shift[2]) == (1.0, 0.0)
    for j in range(2):
        y, x = labels[:, j].numpy(), logits[:, j:j + 1].double().numpy()
        pos, neg = y.sum(), len(y) - y.sum()
        t = np.where(y == 1, (pos + 1) / (pos + 2), 1 / (neg + 2))    # Platt's targets as two weighted rows
        ref = LogisticRegression(C=1e10, tol=1e-10, max_iter=10_000).fit(
            np.concatenate([x, x]), np.r_[np.ones(len(y)), np.zeros(len(y))], sample_weight=np.r_[t, 1 - t])
        assert scale[j] == pytest.approx(ref.coef_[0, 0], rel=1e-3) and shift[j] == pytest.approx(ref.intercept_[0], abs=1e-3)
    task = MultiLabel(thresholds=(0.3, 0.5, 0.7)).calibrated(scale, shift)
    probs, raw = task.probabilities(logits).numpy(), torch.sigmoid(logits).numpy()
    np.testing.assert_allclose(task.uncalibrated(probs), raw, atol=1e-5)
    for j in range(2):
        assert average_precision_score(labels[:, j], probs[:, j]) == pytest.approx(
            average_precision_score(labels[:, j], raw[:, j]))
    assert np.array_equal(task.decisions(probs), raw >= np.array([0.3, 0.5, 0.7]))  # the thresholds moved with them
    facts = tag_calibration_facts(logits, labels, task)
    assert facts["tags_fitted"] == 2 and facts["val_ece_after"] < facts["val_ece_before"] / 2
    assert facts["val_nll_after"] < facts["val_nll_before"]
