"""HTML for notebook cells (`_repr_html_`): small tables with inline styles only, so showing a result
never restyles the notebook around it."""
from __future__ import annotations

import html
from typing import Any, Iterable

_CELL = 'style="border:1px solid #ccc;padding:2px 8px;text-align:left"'


def table(headers: list[str], rows: Iterable[Iterable[Any]], caption: str | None = None) -> str:
    head = "".join(f"<th {_CELL}>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td {_CELL}>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    cap = f"<caption style=\"text-align:left\">{html.escape(caption)}</caption>" if caption else ""
    return f'<table style="border-collapse:collapse">{cap}<tr>{head}</tr>{body}</table>'


def paragraphs(lines: Iterable[str]) -> str:
    return "".join(f"<p>{html.escape(line)}</p>" for line in lines)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)
