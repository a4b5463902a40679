"""The example notebooks run top to bottom (nbclient), at tiny sizes set through their `parameters` cell,
so they never rot (issue 16, item 4)."""
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
import nbformat  # noqa: E402

pytestmark = pytest.mark.slow  # runs every notebook top to bottom (about 50 s)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = {"kaggle_cifar10.ipynb": {"PER_CLASS": 12, "EPOCHS": 1},
        "clothing_classifier.ipynb": {"PER_CLASS": 6, "SMALL": 32, "LARGE": 48, "EPOCHS_SMALL": 1,
                                      "EPOCHS_LARGE": 1},
        "phylum_family.ipynb": {"PER_FAMILY": 10, "EPOCHS": 1, "IMG_SIZE": 24},
        "multilabel.ipynb": {"IMAGES": 60, "EPOCHS": 2, "IMG_SIZE": 16},
        "regression.ipynb": {"IMAGES": 80, "EPOCHS": 2, "IMG_SIZE": 16}}
DRAWS_BARS = {"kaggle_cifar10.ipynb", "clothing_classifier.ipynb"}  # phylum_family trains with verbose=False


def run_notebook(name: str, cwd: Path, **parameters) -> nbformat.NotebookNode:
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", []))
    cell.source += "\n# set by the test suite\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


@pytest.mark.parametrize("name", sorted(TINY))
def test_example_notebook_runs(name, tmp_path):
    nb = run_notebook(name, tmp_path, **TINY[name])
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert [o for o in outputs if o.output_type == "error"] == []
    assert not [o for o in outputs if "ipywidgets" in o.get("text", "")]  # rich's warning when bars cannot draw
    if name in DRAWS_BARS:  # the training progress bars, drawn in a widget by the kernel
        assert [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    if name == "kaggle_cifar10.ipynb":
        submission = (tmp_path / "runs" / "kaggle-cifar10" / "submission.csv").read_text().splitlines()
        assert submission[0] == "ID,TARGET" and len(submission) == 51
        shown = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert len(shown) >= 2   # the confusion matrix and the ROC curves, inline


def test_every_example_is_executed():
    assert sorted(p.name for p in EXAMPLES.glob("*.ipynb")) == sorted(TINY)
