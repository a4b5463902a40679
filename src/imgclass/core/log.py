"""Where imgclass's messages go: the standard `logging` logger named "imgclass".

Until someone configures that logger, imgclass gives it rich's handler on stderr at level INFO (as
transformers and Ultralytics do for theirs), so a terminal or a notebook shows notes and epoch lines
without any set-up. A library user silences or redirects it with the logging module alone:

    logging.getLogger("imgclass").setLevel(logging.WARNING)   # warnings only
    logging.getLogger("imgclass").handlers = [my_handler]     # somewhere else
    logging.getLogger("imgclass").handlers = [logging.NullHandler()]
    logging.getLogger("imgclass").propagate = True            # these two: to the root logger's set-up

Set-up made before imgclass logs anything (a level, a handler) is kept; the default handler is added
at most once per process, and only to a logger without handlers. Progress bars are not log
records: they draw on `console()`, the console the default handler writes to, so bars and messages
do not garble each other.
"""
from __future__ import annotations

import logging

from rich.console import Console
from rich.highlighter import NullHighlighter
from rich.logging import RichHandler

logger = logging.getLogger("imgclass")
_console: Console | None = None
_added = False


def console() -> Console:
    """The stderr console shared by the default log handler and the progress bars."""
    global _console
    if _console is None:
        _console = Console(stderr=True)
    return _console


def bars_visible(c: Console) -> bool:
    """Whether live progress bars can draw on this console: a terminal, or Jupyter with ipywidgets (rich
    draws there in a widget; without it, it would warn on every bar instead: pip install imgclass[notebook])."""
    if c.is_terminal:
        return True
    if not c.is_jupyter:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _default_handler() -> None:
    global _added
    if _added:
        return
    _added = True
    if logger.level == logging.NOTSET:  # INFO unless the user chose a level (else the root's WARNING would apply)
        logger.setLevel(logging.INFO)
    if logger.handlers:  # the user's own handlers: left as they are
        return
    c = console()
    if c.is_terminal or c.is_jupyter:
        # No time or source path: these are a program's messages to its user, not a server's log lines.
        handler: logging.Handler = RichHandler(console=c, show_time=False, show_path=False, markup=False,
                                               highlighter=NullHighlighter(), keywords=[])
    else:
        # Redirected to a file or a CI log: rich would wrap every message at 80 columns and pad it with
        # spaces, so plain lines instead, one per message.
        handler = _PlainHandler()
    logger.addHandler(handler)
    logger.propagate = False  # else a root handler (logging.basicConfig) prints each line twice


class _PlainHandler(logging.StreamHandler):
    """One plain line a message ("warning: " before warnings), on whatever sys.stderr is when it is
    written (as logging's own last-resort handler does), so a swapped stderr (pytest, a notebook) is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return console().file

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the property always answers instead
        pass

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def info(message: str) -> None:
    _default_handler()
    logger.info(message)


def warning(message: str) -> None:
    _default_handler()
    logger.warning(message)
