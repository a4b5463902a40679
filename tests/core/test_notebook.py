"""issue 16, item 3 (in part): results show as HTML in a notebook without restyling it, and progress
bars render in Jupyter."""
import io

from rich.console import Console

import imgclass
from imgclass.data.check import check_dataset
from imgclass.training.run import load_run

from helpers import make_class_folders


def _scoped(page: str) -> bool:
    return "<style" not in page and "<link" not in page


def test_run_predictions_and_comparison_show_as_tables(trained_run):
    run = load_run(trained_run)
    page = run._repr_html_()
    assert _scoped(page) and "<table" in page and "accuracy" in page and f"{run.metrics['test']['accuracy']:.4f}" in page
    results = imgclass.predict(trained_run, [trained_run / "splits.csv", *sorted((trained_run.parent / "data" / "cat")
                                                                               .glob("*.png"))[:2]])
    page = results._repr_html_()
    assert isinstance(results, list) and _scoped(page)
    assert results[1]["top_k"][0]["label"] in page and "error" in page   # the CSV is not an image
    rows = imgclass.compare([trained_run])
    assert isinstance(rows, list) and "val accuracy" in rows._repr_html_() and _scoped(rows._repr_html_())


def test_check_report_shows_counts(tmp_path):
    report = check_dataset(make_class_folders(tmp_path / "d", per_class=5))
    page = report._repr_html_()
    assert _scoped(page) and "<td style" in page and "cat" in page and "unusable" in page


def test_evaluation_report_is_isolated_in_an_iframe(trained_run, tmp_path):
    ev = imgclass.evaluate(trained_run, split="test", out=tmp_path / "eval")
    page = ev._repr_html_()
    assert page.startswith("<iframe srcdoc=") and "<style" not in page   # the report's CSS stays inside
    assert "&lt;style" in page or "&lt;h1" in page


def test_bars_draw_on_a_terminal_and_in_jupyter_with_ipywidgets(monkeypatch):
    import sys
    from imgclass.core.log import bars_visible
    assert bars_visible(Console(file=io.StringIO(), force_terminal=True))
    assert bars_visible(Console(file=io.StringIO(), force_jupyter=True))  # rich draws in an ipywidgets output
    assert not bars_visible(Console(file=io.StringIO(), force_jupyter=False, force_terminal=False))
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets raises ImportError
    assert not bars_visible(Console(file=io.StringIO(), force_jupyter=True))
    # that the bars really draw in a kernel: tests/examples/test_notebooks.py


def test_no_bars_and_no_warnings_in_jupyter_without_ipywidgets(monkeypatch, recwarn):
    import sys
    from imgclass.training.loop.callbacks import ProgressDisplay

    class T:
        epoch, epochs, steps_per_epoch = 0, 2, 3
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets raises ImportError
    display = ProgressDisplay(Console(file=io.StringIO(), force_jupyter=True))
    display.before_fit(T())
    assert display.progress is None     # rich would warn 'install "ipywidgets"' at every refresh instead
    assert not [w for w in recwarn if "ipywidgets" in str(w.message)]
