import json

import pytest

import imgclass
from imgclass.training.demo import write_digits

pytestmark = pytest.mark.slow  # trains the digits demo to 95%


def test_demo_reaches_95_percent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = imgclass.demo(out=tmp_path / "demo", data_dir=tmp_path / "digits")
    assert sum(1 for _ in (tmp_path / "digits").rglob("*.png")) == 1797
    assert run.classes == [str(d) for d in range(10)]
    results = json.loads((run.dir / "results.json").read_text())
    assert results["metrics"]["test"]["accuracy"] >= 0.95
    assert results["metrics"]["test"]["n"] >= 170


def test_digits_written_once(tmp_path):
    folder = write_digits(tmp_path / "d")
    stamp = (folder / "0" / "0.png").stat().st_mtime_ns
    write_digits(folder)
    assert (folder / "0" / "0.png").stat().st_mtime_ns == stamp


def test_api_names_are_functions_after_submodule_imports():
    import imgclass.models  # noqa: F401  (a subpackage import must not shadow the API)
    assert callable(imgclass.demo) and callable(imgclass.list_models) and callable(imgclass.train)
