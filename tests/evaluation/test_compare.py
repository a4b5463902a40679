"""compare, fairly: the settings that differ as columns, the verdict on validation (never test), overlaid
validation curves, --sort, and the written summary across runs (--report)."""
import json
import re

import pytest

import imgclass
from imgclass.cli import main
from imgclass.core.errors import UserError
from imgclass.evaluation.compare import Comparison, verdict
from imgclass.core.rundir import RunDir

from helpers import make_class_folders

LRS = (0.05, 0.01, 0.002)


@pytest.fixture(scope="module")
def lr_runs(tmp_path_factory):
    """Three runs on the same data and split that differ only in the learning rate."""
    root = tmp_path_factory.mktemp("compare")
    data = make_class_folders(root / "data", per_class=14)
    return [imgclass.train(data, out=str(root / f"lr{lr}"), model="cnn", model_args={"width": 8, "depth": 2},
                           img_size=16, epochs=4, batch_size=8, lr=lr, tensorboard=False, verbose=False,
                           val_split=0.2, test_split=0.2)
            for lr in LRS]


def _set_accuracies(run, val, test):
    """Rewrite a run's recorded val/test accuracy (to stage a disagreement between the two splits)."""
    rd = RunDir(run.dir)
    results = rd.read_results()
    results["metrics"]["val"]["accuracy"], results["metrics"]["test"]["accuracy"] = val, test
    rd.write_results(results)


def test_differing_settings_are_columns(lr_runs):
    rows = imgclass.compare([r.dir for r in lr_runs])
    assert rows.settings == ["lr"]                # out differs too, but never changes what a run learns
    assert [r["lr"] for r in rows] == list(LRS)
    assert rows.columns[:3] == ["run", "model", "lr"]
    assert all(len(r.history) == len(rows.histories[str(r.dir)]) for r in lr_runs)


def test_verdict_follows_validation_not_test(lr_runs, tmp_path):
    _set_accuracies(lr_runs[0], val=0.70, test=0.95)   # best on test
    _set_accuracies(lr_runs[1], val=0.90, test=0.60)   # best on validation
    _set_accuracies(lr_runs[2], val=0.80, test=0.80)
    rows = imgclass.compare([r.dir for r in lr_runs])
    v = rows.verdict()
    assert v.startswith(f"favours {lr_runs[1].dir} on validation accuracy 0.9000, +10.0 points over {lr_runs[2].dir}")
    assert "its test accuracy 0.6000" in v
    # staged rows: a margin under two standard errors of the validation split is called noise
    close = [{"run": "a", "val accuracy": 0.91, "val images": 100, "test accuracy": 0.5},
             {"run": "b", "val accuracy": 0.90, "val images": 100, "test accuracy": 0.99}]
    assert "favours a" in verdict(close) and "within the noise of 100 validation images" in verdict(close)
    far = [dict(close[0], **{"val images": 100000}), close[1]]
    assert "beyond the noise" in verdict(far)
    assert verdict([{"run": "a", "val accuracy": None}, {"run": "b", "val accuracy": None}]).startswith("no verdict")


def test_sort_and_unknown_column(lr_runs):
    _set_accuracies(lr_runs[0], val=0.70, test=0.95)
    _set_accuracies(lr_runs[1], val=0.90, test=0.60)
    _set_accuracies(lr_runs[2], val=0.80, test=0.80)
    by_val = imgclass.compare([r.dir for r in lr_runs], sort="val_accuracy")
    assert [r["val accuracy"] for r in by_val] == [0.90, 0.80, 0.70]
    assert [r["lr"] for r in imgclass.compare([r.dir for r in lr_runs], sort="lr")] == sorted(LRS)
    with pytest.raises(UserError, match="--sort: no column 'speed'"):
        imgclass.compare([r.dir for r in lr_runs], sort="speed")


def test_html_and_png_curves(lr_runs, tmp_path):
    page = tmp_path / "c.html"
    rows = imgclass.compare([r.dir for r in lr_runs], html=page)
    text = page.read_text()
    assert "data:image/png;base64," in text and "<th" in text and ">lr<" in text
    png = (tmp_path / "c_val_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    ax_acc, ax_loss = rows.curves().axes
    assert len(ax_acc.lines) == len(ax_loss.lines) == 3   # one line per run
    run0 = lr_runs[0]
    assert list(ax_acc.lines[0].get_ydata()) == pytest.approx([h["val_acc"] for h in run0.history], abs=1e-5)


def test_summary_report_quotes_the_runs_numbers(lr_runs, tmp_path):
    _set_accuracies(lr_runs[0], val=0.70, test=0.95)
    _set_accuracies(lr_runs[1], val=0.90, test=0.60)
    _set_accuracies(lr_runs[2], val=0.80, test=0.80)
    out = tmp_path / "summary"
    assert main(["compare"] + [str(r.dir) for r in lr_runs] + ["--report", str(out), "--sort", "lr"]) == 0
    md = (out / "report.md").read_text()
    tldr = md.split("## TL;DR")[1].split("## The runs")[0]
    assert len(tldr.split()) <= 500
    best = RunDir(lr_runs[1].dir).read_results()["metrics"]
    assert f"validation accuracy {best['val']['accuracy']:.4f}" in tldr
    assert f"test accuracy {best['test']['accuracy']:.4f}" in tldr
    assert "lr=0.01" in tldr and "+10.0 points over" in tldr
    # the weakest classes quoted are the chosen run's lowest F1 on its validation evaluation
    per = json.loads((lr_runs[1].dir / "eval" / "val" / "metrics.json").read_text())["per_class"]
    imperfect = [c for c in per if per[c]["f1"] < 1]
    if imperfect:
        worst = min(imperfect, key=lambda c: per[c]["f1"])
        assert re.search(rf"Weakest classes\*\* \(val F1\): {worst} {per[worst]['f1']:.3f}", tldr)
    else:  # every class perfect on validation: no class is called weak
        assert "Weakest classes" not in tldr
    assert "| lr |" in md.replace("| run | model | lr |", "| lr |") and "val_curves.png" in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<b>What won.</b>" in html
    assert (out / "val_curves.png").read_bytes().startswith(b"\x89PNG")


def test_tldr_stays_within_500_words_for_many_runs(lr_runs):
    from imgclass.evaluation.summary import tldr
    rows = imgclass.compare([r.dir for r in lr_runs])
    many = Comparison([dict(rows[i % 3], run=f"{rows[i % 3]['run']}") for i in range(120)], rows.settings,
                      rows.histories)
    assert len(" ".join(tldr(many)).split()) <= 500


def test_weakest_classes_by_f1_on_validation_first(tmp_path):
    from imgclass.evaluation.summary import _weakest
    per = {"a": {"f1": 0.9, "support": 10}, "b": {"f1": 0.5, "support": 4}, "c": {"f1": 1.0, "support": 5},
           "d": {"f1": 0.7, "support": 6}, "e": {"f1": 0.95, "support": 8}}
    for split, table in (("test", {"z": {"f1": 0.1, "support": 1}}), ("val", per)):
        (tmp_path / "eval" / split).mkdir(parents=True)
        (tmp_path / "eval" / split / "metrics.json").write_text(json.dumps({"per_class": table}))
    assert _weakest({"run": str(tmp_path)}) == ("val", [("b", 0.5, 4), ("d", 0.7, 6), ("a", 0.9, 10)])
