"""A verb's options as one typed dataclass, and the command line generated from it.

Every option is a dataclass field; its help text is the comment after it (continued on comment-only lines below),
so the default, the type and the words live in one place. `add_options` turns the fields into argparse options,
`from_args` builds the dataclass back from what argparse parsed (fields the user did not give keep the
dataclass's defaults: argparse never holds a second copy of a default), and `to_argv` writes a dataclass as the
command line that parses back into it (what the tests use to feed one request through the API and the CLI).
`option(...)` adds what the command line needs beyond the type: a positional argument, another flag name, a
metavar, or that a field is for Python only.

Light on purpose (dataclasses, argparse, inspect): building the parser must not import torch or anything heavy.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

_CLI = "imgclass.cli"  # the metadata key of option()'s settings


def option(default: Any = dataclasses.MISSING, *, positional: bool = False, nargs: str | None = None,
           flags: tuple[str, ...] = (), metavar: str | None = None, cli: bool = True, parse=None,
           shown_default: str | None = None) -> Any:
    """A dataclass field with command-line settings. positional: an argument, not an --option (nargs: "?", "+",
    "*"); flags: the option's names when not --field-name (the first is the one to_argv writes); cli=False: Python
    only (a PIL image, a Predictor, callbacks); parse: a function from the text to the value; shown_default: the
    default as the help shows it, where the field's own is None and the library decides."""
    meta = {_CLI: dict(positional=positional, nargs=nargs, flags=flags, metavar=metavar, cli=cli, parse=parse,
                       shown_default=shown_default)}
    if isinstance(default, (list, dict, set)):
        raise TypeError("a mutable default: use a tuple")
    return dataclasses.field(default=default, metadata=meta)


def _settings(f: dataclasses.Field) -> dict[str, Any]:
    return f.metadata.get(_CLI) or dict(positional=False, nargs=None, flags=(), metavar=None, cli=True, parse=None,
                                        shown_default=None)


@lru_cache(maxsize=None)
def field_help(cls: type) -> dict[str, str]:
    """The comment after each field of a dataclass (and comment-only lines right below it), as its help text; a
    field of a base class keeps its base's words."""
    helps: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            helps.update(field_help(base))
    last = None
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+):[^#]*?(?:#\s*(.*))?$", line)
        if m and not line.lstrip().startswith("#"):
            last = m.group(1)
            if m.group(2):
                helps[last] = m.group(2).strip()
            continue
        more = re.match(r"\s+#\s*(.*)$", line)
        if more and last in helps and not more.group(1).startswith("---"):  # "# --- images ---": a section heading
            helps[last] += " " + more.group(1).strip()
        else:
            last = None
    return helps


def _base_type(hint: Any) -> Any:
    """int | None -> int; a union holding str (an int or a text, e.g. "150,299") -> str."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return str if str in args and len(args) > 1 else args[0]
    return hint


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None if f.default is dataclasses.MISSING else f.default


def key_values(text: str) -> dict[str, Any]:
    """'width=64,depth=3' -> {'width': 64, 'depth': 3} (values read as YAML scalars): a dict option's form."""
    import yaml
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected key=value pairs, got '{part}'")
        out[key.strip()] = yaml.safe_load(value)
    return out


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields the command line has: the class's own first (its positional arguments among them), then those of
    the options it shares with other verbs (keyword-only, from its bases)."""
    fields = [f for f in dataclasses.fields(cls) if _settings(f)["cli"]]
    return [f for f in fields if not f.kw_only] + [f for f in fields if f.kw_only]


def flag_of(f: dataclasses.Field) -> str:
    return (_settings(f)["flags"] or ("--" + f.name.replace("_", "-"),))[0]


def add_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), prefix: str = "") -> None:
    """The dataclass's fields as the parser's arguments and options (default SUPPRESS: from_args keeps the
    dataclass's own defaults). A field holding a dataclass adds that one's fields (their dest: FIELD.NAME)."""
    helps, hints = field_help(cls), get_type_hints(cls)
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        s = _settings(f)
        base = _base_type(hints[f.name])
        if dataclasses.is_dataclass(base):
            add_options(parser, base, prefix=f"{prefix}{f.name}.")
            continue
        default = _default(f)
        shown = s["shown_default"] if s["shown_default"] is not None else default
        text = helps.get(f.name, "")
        if shown not in (None, (), {}, False, "") and "[default:" not in text:
            text += f" [default: {shown}]"
        kw: dict[str, Any] = dict(help=text.replace("%", "%%"))  # argparse formats help with %
        if s["metavar"]:
            kw["metavar"] = s["metavar"]
        if get_origin(base) is Literal:
            kw["choices"] = get_args(base)
        sequence = get_origin(base) in (tuple, list)
        if s["parse"] is not None:
            kw["type"] = s["parse"]
        elif base is dict:
            kw.update(type=key_values, metavar=s["metavar"] or "K=V,...")
        elif base in (int, float):
            kw["type"] = base
        elif sequence and get_args(base)[0] in (int, float):
            kw["type"] = get_args(base)[0]
        if s["positional"]:
            parser.add_argument(f.name, nargs=s["nargs"] or ("?" if f.default is not dataclasses.MISSING else None),
                                default=argparse.SUPPRESS if f.default is not dataclasses.MISSING else None, **kw)
            continue
        flags = list(s["flags"]) or ["--" + f.name.replace("_", "-")]
        dest = prefix + f.name
        if base is bool:
            parser.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                **kw)
        else:
            parser.add_argument(*flags, dest=dest, default=argparse.SUPPRESS,
                                nargs=s["nargs"] or ("*" if sequence else None), **kw)


def from_args(cls: type, args: argparse.Namespace | dict, prefix: str = "", **more: Any):
    """The dataclass from parsed arguments (fields not given keep their defaults), plus `more`."""
    given = {k[len(prefix):]: v for k, v in (vars(args) if isinstance(args, argparse.Namespace) else args).items()
             if k.startswith(prefix)}
    hints = get_type_hints(cls)
    values = {}
    for f in cli_fields(cls):
        base = _base_type(hints[f.name])
        if dataclasses.is_dataclass(base):
            nested = {k: v for k, v in given.items() if k.startswith(f.name + ".")}
            if nested:
                values[f.name] = from_args(base, nested, prefix=f.name + ".")
            continue
        if f.name in given:
            value = given[f.name]
            values[f.name] = tuple(value) if isinstance(value, list) else value  # requests are frozen: tuples
    return cls(**values, **more)


def to_argv(obj: Any) -> list[str]:
    """The command line (after the verb) that parses back into obj: positional fields in order, then each option
    that differs from its default."""
    hints = get_type_hints(type(obj))
    positional, flagged = [], []
    for f in cli_fields(type(obj)):
        value, s = getattr(obj, f.name), _settings(f)
        if dataclasses.is_dataclass(value):
            flagged += to_argv(value)
            continue
        if s["positional"]:
            positional += [str(v) for v in value] if isinstance(value, (list, tuple)) else (
                [] if value is None else [str(value)])
            continue
        if value == _default(f):
            continue
        flag = flag_of(f)
        if _base_type(hints[f.name]) is bool:
            flagged.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            flagged += [flag, *map(str, value)]
        elif isinstance(value, dict):
            flagged += [flag, ",".join(f"{k}={v}" for k, v in value.items())]
        elif value is not None:
            flagged += [flag, str(value) if not isinstance(value, Path) else str(value)]
    return positional + flagged
