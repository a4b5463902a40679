"""Runs for the workbench's tests: two small evaluated runs of the same data under one runs folder."""
from __future__ import annotations

import pytest

from helpers import FAST, make_class_folders


MISLABELLED = (17, 18, 19)


@pytest.fixture(scope="session")
def runs_folder(tmp_path_factory):
    """(runs folder, data folder, with three fish in the cat folder): runs 'short' (2 epochs) and 'long' (4 epochs), each evaluated (val and test)."""
    import imgclass
    root = tmp_path_factory.mktemp("workbench")
    data = make_class_folders(root / "data", per_class=20)
    for n in MISLABELLED:  # three fish filed as cats: the label review's suspects
        (data / "fish" / f"img{n}.png").rename(data / "cat" / f"fish{n}.png")
    for name, epochs in (("short", 2), ("long", 4)):
        imgclass.train(data, out=str(root / "runs" / name), **dict(FAST, epochs=epochs, evaluate=True))
    return root / "runs", data


@pytest.fixture
def own_runs(runs_folder, tmp_path):
    """(a copy of the runs folder for this test alone, data folder): for tests that write review decisions, which
    must not meet another test's, whichever process and order the tests run in."""
    import shutil
    runs, data = runs_folder
    shutil.copytree(runs, tmp_path / "runs", ignore=shutil.ignore_patterns("review"))
    return tmp_path / "runs", data
