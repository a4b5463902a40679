"""imgclass's messages go through the "imgclass" logger: shown by rich's handler until the user sets the
logger up, and then silenced or redirected by the logging module alone."""
import io
import logging

import pytest
from rich.console import Console

import imgclass
from imgclass.core import log

from helpers import make_class_folders

OPTS = dict(model="cnn", model_args={"width": 8, "depth": 2}, img_size=16, epochs=2, batch_size=8,
            tensorboard=False, evaluate=False)


@pytest.fixture
def fresh_logger(monkeypatch):
    """The logger as a new process has it: no handler, no level, the default handler not yet added."""
    logger = logging.getLogger("imgclass")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(log, "_added", False)
    shown = Console(file=io.StringIO(), width=200)
    monkeypatch.setattr(log, "_console", shown)
    logger.manager._clear_cache()  # isEnabledFor caches levels
    yield logger, shown
    logger.manager._clear_cache()


def test_default_handler_shows_epoch_lines_on_the_shared_console(tmp_path, fresh_logger):
    logger, shown = fresh_logger
    imgclass.train(make_class_folders(tmp_path / "data"), out=str(tmp_path / "run"), **OPTS)
    text = shown.file.getvalue()
    assert "epoch   1/2" in text and "epoch   2/2" in text and "training cnn on" in text
    assert len(logger.handlers) == 1 and logger.level == logging.INFO and logger.propagate is False
    log.warning("two files were skipped")  # not a terminal: plain lines, warnings marked as such
    assert shown.file.getvalue().endswith("\nwarning: two files were skipped\n")


def test_level_set_beforehand_silences_info(tmp_path, fresh_logger):
    logger, shown = fresh_logger
    logger.setLevel(logging.WARNING)
    imgclass.train(make_class_folders(tmp_path / "data"), out=str(tmp_path / "run"), **OPTS)
    assert "epoch" not in shown.file.getvalue()
    assert logger.level == logging.WARNING  # the user's level is kept


def test_user_handler_replaces_the_default(tmp_path, fresh_logger):
    logger, shown = fresh_logger
    stream = io.StringIO()
    logger.addHandler(logging.StreamHandler(stream))   # no level set: imgclass's INFO, not the root's WARNING
    imgclass.train(make_class_folders(tmp_path / "data"), out=str(tmp_path / "run"), **OPTS)
    assert shown.file.getvalue() == ""  # nothing on imgclass's own console
    lines = stream.getvalue().splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert len(logger.handlers) == 1 and logger.level == logging.INFO


def test_handed_to_the_root_logger(tmp_path, fresh_logger, caplog):
    logger, shown = fresh_logger
    logger.handlers = [logging.NullHandler()]
    with caplog.at_level(logging.INFO, logger="imgclass"):
        imgclass.train(make_class_folders(tmp_path / "data"), out=str(tmp_path / "run"), **OPTS)
    assert [r for r in caplog.records if r.name == "imgclass" and r.getMessage().startswith("epoch   2/2")]
    assert shown.file.getvalue() == ""
