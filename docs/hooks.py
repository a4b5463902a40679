"""MkDocs hook: the command-line reference (docs/reference/cli.md) written at build time from the parser that
`imgclass` itself builds from the typed requests (imgclass/requests.py, training/config.py), so it cannot drift."""
from __future__ import annotations

import os

MARKER = "<!-- imgclass-cli -->"


def cli_reference() -> str:
    os.environ["COLUMNS"] = "110"  # argparse wraps to the terminal: one width for every build
    from imgclass.cli import COMMANDS, build_parser
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices  # argparse keeps the sub-parsers here
    parts = []
    for verb, (summary, _, _) in COMMANDS.items():
        parts += [f"## imgclass {verb}", "", summary[0].upper() + summary[1:] + ".", "", "```text",
                  verbs[verb].format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARKER, cli_reference()) if MARKER in markdown else markdown
