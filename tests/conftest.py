"""Shared fixtures."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

# Child processes by fork, not vfork (CPython's documented switch, subprocess._USE_VFORK). With the deploy extras'
# libraries loaded in this one long process (OpenVINO, NNCF, ONNX Runtime's quantizer, Ray...), the suite died by
# SIGSEGV in the parent right after a vfork (gdb, 2026-12-02: "Detaching after vfork from child", then SIGSEGV in
# the parent's time.sleep), at whichever test next started a process (three runs, three different tests).
subprocess._USE_VFORK = False

from helpers import FAST, make_class_folders


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "data")


@pytest.fixture
def imgclass_log():
    """The messages the "imgclass" logger emits during a test, as (level name, text) pairs."""
    import logging

    class Keep(logging.Handler):
        def emit(self, record):
            records.append((record.levelname, record.getMessage()))
    records: list[tuple[str, str]] = []
    handler = Keep(level=logging.DEBUG)
    logger = logging.getLogger("imgclass")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One small trained run shared by the prediction tests."""
    import imgclass
    root = tmp_path_factory.mktemp("shared")
    data = make_class_folders(root / "data", per_class=16)
    run = imgclass.train(data, out=str(root / "run"), **dict(FAST, epochs=4))
    return run.dir


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never touch the user's decode cache or runtime cache (subprocesses inherit the variables)."""
    import os
    os.environ["IMGCLASS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    runtime = tmp_path_factory.mktemp("runtime")
    runtime.chmod(0o700)  # the runtime cache is used only when it is this user's alone
    os.environ["IMGCLASS_RUNTIME_CACHE"] = str(runtime)
    yield


# Fuzz tests (hypothesis): a fixed, derandomised search in CI so a run is reproducible; set
# HYPOTHESIS_PROFILE=fuzz for a long random one (e.g. before a release).
try:
    from hypothesis import HealthCheck, settings
    settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    settings.register_profile("fuzz", deadline=None, max_examples=5000,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    import os as _os
    settings.load_profile(_os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a dev dependency; the fuzz tests skip without it
    pass
