"""issue 16: `import imgclass` is light, and drawing the evaluation's figures leaves pyplot alone."""
import subprocess
import sys


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_import_loads_no_heavy_stack():
    out = _run("import imgclass, sys; print(sorted(m for m in ('matplotlib', 'sklearn', 'fastapi', 'torch') "
               "if m in sys.modules))")
    assert out == "[]"
    assert _run("import imgclass; print(imgclass.train.__module__, imgclass.__version__)").startswith(
        "imgclass.training.run ")


def test_figures_do_not_touch_pyplot_or_the_backend():
    out = _run("import matplotlib; matplotlib.use('svg'); import sys, numpy as np; "
               "from imgclass.evaluation import plots; "
               "fig = plots.confusion_matrix(np.array([[3, 1], [0, 4]]), ['a', 'b'], normalize=False); "
               "assert fig._repr_png_().startswith(bytes([137]) + b'PNG'); "
               "print(type(fig).__name__, matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    assert out == "ShownFigure svg False"
