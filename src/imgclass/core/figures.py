"""matplotlib Figures made outside pyplot, for every layer that draws (evaluation's plots, explain's heatmaps):
no global state and no backend switch, so a notebook keeps its backend (and its own figures), nothing needs
closing, and a notebook still shows them inline."""
from __future__ import annotations

from pathlib import Path

from typing import Any

from matplotlib.figure import Figure


class ShownFigure(Figure):
    """A Figure that a notebook shows inline by itself (`_repr_png_`): figures here live outside pyplot, and
    IPython's inline display hooks only figures made through pyplot."""

    def _repr_png_(self) -> bytes:
        return png_bytes(self, dpi=100)


def png_bytes(figure: Figure, dpi: int = 110) -> bytes:
    """A figure as PNG bytes (notebook display, and the figures embedded in HTML pages)."""
    import io
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def png_data_url(png: bytes) -> str:
    """PNG bytes as a data: URL, for a page that must work offline with its images inside it."""
    import base64
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def save_figure(figure: Figure, path: str | Path, dpi: int = 110, tight: bool = False) -> Path:
    """Write a figure to path, its format from the suffix (PNG without one), atomically: a kill leaves the old
    file or the new one (a half-written PNG would otherwise stay under the name)."""
    from .files import staged_file
    path = Path(path)
    with staged_file(path) as tmp:
        figure.savefig(tmp, format=path.suffix[1:].lower() or "png", dpi=dpi, bbox_inches="tight" if tight else None)
    return path


def new_figure(*args, figsize, **kwargs) -> tuple[Figure, Any]:
    """A Figure of its own with its subplots (Figure.subplots' arguments)."""
    fig = ShownFigure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)
