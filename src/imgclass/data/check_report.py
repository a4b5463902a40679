"""Printing a CheckReport for people (the JSON form is CheckReport.to_dict). Every name from the data (files,
folders, classes, tags) is escaped before rich renders it: a file named `a[/b].jpg` is text, not markup (it raised
MarkupError after the whole check had run), and `[link=...]` in a name cannot dress itself as a link."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .check import CheckReport

SHOW = 10  # items listed per section; the JSON has them all


def print_check(r: CheckReport, console: Console | None = None) -> None:
    c = console or Console()
    kind = "tag" if r.tag_stats is not None else "class"
    c.print(f"[bold]{escape(str(r.root))}[/]  ({r.layout}; {len(r.classes)} {kind}{'es' if kind == 'class' else 's'})",
            highlight=False)
    for note in r.notes:
        c.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    table = Table(title=f"usable images per {kind}")
    splits = [s for s in ("train", "val", "test", "all") if sum(r.counts[s].values())]
    table.add_column(kind, overflow="fold")
    for s in splits:
        table.add_column(s, justify="right")
    for cls in r.classes:
        table.add_row(escape(cls), *(str(r.counts[s][cls]) for s in splits))
    table.add_row("[bold]imbalance (max/min)", *(f"{r.imbalance.get(s, 0):.1f}x" for s in splits))
    c.print(table)
    if r.tag_stats is not None:
        _print_tags(c, r.tag_stats)
    if r.coarse_counts:
        coarse = Table(title="usable images per coarse class")
        coarse.add_column("coarse class", overflow="fold")
        for s in splits:
            coarse.add_column(s, justify="right")
        for cls in r.coarse_counts["all"]:
            coarse.add_row(escape(cls), *(str(r.coarse_counts[s][cls]) for s in splits))
        c.print(coarse)
    if r.sizes["min"]:
        c.print(f"sizes (w x h): min {r.sizes['min'][0]}x{r.sizes['min'][1]}, median "
                f"{r.sizes['median'][0]:g}x{r.sizes['median'][1]:g}, max {r.sizes['max'][0]}x{r.sizes['max'][1]}",
                highlight=False)
        peak = max(r.sizes["longer_side_histogram"].values())
        for rng, n in r.sizes["longer_side_histogram"].items():
            c.print(f"  longer side {rng:>10} px {'#' * max(1, round(30 * n / peak))} {n}", highlight=False)
    c.print("formats: " + ", ".join(f"{k} {v}" for k, v in r.formats.items()) +
            "; modes: " + ", ".join(f"{k} {v}" for k, v in r.modes.items()), highlight=False)

    def section(title: str, items: list[str]) -> None:
        if not items:
            return
        c.print(f"[bold]{title}[/] ({len(items)})", highlight=False)
        for item in items[:SHOW]:
            c.print(f"  {escape(item)}", highlight=False, soft_wrap=True)
        if len(items) > SHOW:
            c.print(f"  ... and {len(items) - SHOW} more (see --json)", highlight=False)

    section("unusable files", [f"{u['path']}: {u['reason']}" for u in r.unusable])
    section("LEAKAGE: duplicates across splits", [f"{l['a_split']}:{l['a']} == {l['b_split']}:{l['b']} ({l['kind']})"
                                                  for l in r.leakage])
    section("exact duplicates", [" == ".join(g) for g in r.exact_duplicates])
    section("near duplicates", [f"{n['a']} ~ {n['b']} ({n['distance']} bits)" for n in r.near_duplicates])
    section("suspected label errors (most suspect first)",
            [f"{i['path']}: given {i['given_label']} ({i['given_probability']:.2f}), suggested {i['suggested_label']} "
             f"({i['suggested_probability']:.2f})" for i in r.label_issues or []])
    section("near duplicates by embedding", [f"{n['a']} ~ {n['b']} (similarity {n['similarity']:.3f})"
                                             for n in r.embedding_duplicates or []])
    for name, path in r.files.items():
        c.print(f"{name.replace('_', ' ')}: {escape(str(path))}", highlight=False)
    section("extension does not match content", r.extension_mismatch)
    section("EXIF-rotated (rotation is applied)", r.exif_rotated)
    section("very small images", r.small)
    if r.ignored:
        c.print(f"ignored {len(r.ignored)} non-image file(s)", highlight=False)
    if r.recommendations:
        c.print("[bold]recommendations[/]")
        for rec in r.recommendations:
            c.print(f"  - {escape(rec)}", highlight=False, soft_wrap=True)
    else:
        c.print("[green]no problems found[/]")


def _print_tags(c: Console, stats: dict) -> None:
    """Multi-label: tags per image, untagged images, the most frequent pairs, tags too rare to learn."""
    per_image = ", ".join(f"{k} tag{'s' if k != 1 else ''}: {n}" for k, n in stats["tags_per_image"].items())
    c.print(f"tags per image: {per_image}; untagged images: {stats['untagged']} (they teach 'none of these')",
            highlight=False)
    if stats["co_occurrence"]:
        pairs = Table(title="tags that occur together most often")
        for name in ("tag", "with", "images"):
            pairs.add_column(name, justify="right" if name == "images" else "left", overflow="fold")
        for p in stats["co_occurrence"]:
            pairs.add_row(escape(p["a"]), escape(p["b"]), str(p["images"]))
        c.print(pairs)
    if stats["rare"]:
        c.print(f"[yellow]tags with fewer than 10 training images:[/] {escape(', '.join(stats['rare'][:20]))}"
                + (" ..." if len(stats["rare"]) > 20 else ""), highlight=False)
