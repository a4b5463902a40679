"""matplotlib Figures made outside pyplot, for every layer that draws (evaluation's plots, explain's heatmaps):
no global state and no backend switch, so a notebook keeps its backend (and its own figures), nothing needs
closing, and a notebook still shows them inline."""
from __future__ import annotations

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


def new_figure(*args, figsize, **kwargs) -> tuple[Figure, Any]:
    """A Figure of its own with its subplots (Figure.subplots' arguments)."""
    fig = ShownFigure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)
