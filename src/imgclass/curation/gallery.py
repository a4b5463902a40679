"""Self-contained HTML galleries (one file, thumbnails embedded, every name escaped): what `similar`, the label
issues and the near-duplicates show a person who has to decide about each image."""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from ..data.decode import ImageDecodeError, open_rgb
from ..evaluation.report import html_page
from ..core.figures import png_data_url
from ..core.files import write_text_atomic

THUMB = 160            # a thumbnail's longer side, px
MAX_TILES = 2000       # thumbnails in one page at most (about 10 KB each): the rest are listed by name


@dataclass(frozen=True)
class Tile:
    path: Path | None      # the image shown (None: only the caption)
    caption: str           # plain text, escaped when written


def thumbnail_uri(path: Path) -> str | None:
    """A JPEG thumbnail as a data: URI, or None when the file cannot be read (decoded within the usual limits)."""
    try:
        img = open_rgb(path, draft_size=THUMB)
    except (ImageDecodeError, OSError):
        return None
    img.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_gallery(out: Path, title: str, intro: list[str], rows: list[tuple[str, list[Tile]]],
                  figures: dict[str, bytes] | None = None) -> Path:
    """One row per (heading, tiles); figures: PNGs shown above the rows (name -> bytes)."""
    body = [f"<h1>{html.escape(title)}</h1>"] + [f"<p>{html.escape(p)}</p>" for p in intro]
    for name, png in (figures or {}).items():
        body.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' "
                    f"src='{png_data_url(png)}'>")
    shown = 0
    for heading, tiles in rows:
        body.append(f"<h3>{html.escape(heading)}</h3><div class='row'>")
        for tile in tiles:
            uri = thumbnail_uri(tile.path) if tile.path is not None and shown < MAX_TILES else None
            shown += uri is not None
            image = f"<img src='{uri}' alt=''>" if uri else "<div class='missing'>no preview</div>"
            body.append(f"<figure>{image}<figcaption>{html.escape(tile.caption)}</figcaption></figure>")
        body.append("</div>")
    style = ("<style>.row{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;width:170px}"
             "figcaption{font-size:12px;word-break:break-all}.missing{width:160px;height:60px;background:#eee}</style>")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, html_page(title, [style] + body))
    return out
