"""The documentation (issue 42): a short README that links into docs/, every page the site lists present, and the
command-line reference generated from the parser itself (docs/hooks.py), so it names every verb and option."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_is_a_short_front_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links and [link for link in links if not (ROOT / link).exists()] == []


def _nav_pages(nav):
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        yield from _nav_pages(value) if isinstance(value, list) else [value]


def test_every_page_of_the_site_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = list(_nav_pages(config["nav"]))
    assert "reference/cli.md" in pages and [p for p in pages if not (ROOT / "docs" / p).is_file()] == []


def test_the_cli_reference_is_generated_from_the_parser():
    import importlib.util
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = hooks.on_page_markdown((ROOT / "docs" / "reference" / "cli.md").read_text(), None, None, None)
    from imgclass.cli import COMMANDS
    assert hooks.MARKER not in page
    assert [m for m in re.findall(r"^## imgclass (\S+)$", page, re.M)] == list(COMMANDS)
    assert "--time-budget" in page and "--label-issues CSV" in page
