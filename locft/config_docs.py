"""Text generated from the config schemas (locft.config): the commented locft.toml that
`locft init` writes and the README's configuration reference. Neither restates a default or a
rule by hand, so neither can drift from what the loader accepts.

`python -m locft.config_docs README.md` rewrites the README's block between the
`<!-- config:begin -->` and `<!-- config:end -->` markers; with `--check` it only says whether
the block is current (tests/test_config.py checks the same).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import textwrap
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from locft.config import SECTIONS
from locft.config_rules import bounds_of, describe_bounds, fields_of

BEGIN, END = "<!-- config:begin -->", "<!-- config:end -->"
WIDTH = 100

_NOUNS: dict[Any, tuple[str, str]] = {str: ("string", "strings"), int: ("integer", "integers"),
                                      float: ("number", "numbers"), bool: ("true or false", "booleans")}

HEADER = """\
# locft configuration, written by `locft init`; `locft config template` prints it afresh.
# Every key is optional. A commented key shows its default, or an example where it is unset by
# default. Unknown keys and wrong types are errors, so a typo never silently falls back to a default.
"""


def toml_value(value: Any) -> str:
    """A default or example as TOML source."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    return repr(value)


def _unwrap(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """`annotation` without Optional and Annotated layers, and the bounds those layers carry."""
    bounds: dict[str, Any] = {}
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *metadata = get_args(annotation)
            bounds |= bounds_of(metadata)
        elif origin in (Union, types.UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            return annotation, bounds


def type_text(info: FieldInfo, code: bool = False) -> str:
    """What a key takes, in words: 'number in (0, 1)', 'non-empty list of integers >= 0'; `code`
    puts Markdown code marks around the values of a choice."""
    base, bounds = _unwrap(info.annotation)
    bounds |= bounds_of(info.metadata)
    if get_origin(base) is Literal:
        choices = [f"`{toml_value(c)}`" if code else toml_value(c) for c in get_args(base)]
        return ", ".join(choices[:-1]) + f" or {choices[-1]}"
    if get_origin(base) is tuple:
        item, item_bounds = _unwrap(get_args(base)[0])
        text = f"list of {_NOUNS[item][1]}" + (f" {describe_bounds(item_bounds)}" if item_bounds else "")
        return ("non-empty " if bounds.get("min_length") == 1 else "") + text
    rules = describe_bounds(bounds)
    return _NOUNS[base][0] + (f" {rules}" if rules else "")


def _example(name: str, info: FieldInfo) -> Any:
    if not info.examples:
        raise ValueError(f"{name} is unset by default and has no example to show")
    return info.examples[0]


@functools.cache
def config_template() -> str:
    """The commented locft.toml: every key with its help, what it takes, and its default."""
    out = [HEADER]
    for section, cls in SECTIONS.items():
        out.append(f"\n[{section}]\n")
        for name, info in fields_of(cls).items():
            if info.default is None:
                example = toml_value(_example(f"{section}.{name}", info))
                out.append(f"# {name} = {example}   # an example; unset by default\n")
            else:
                out.append(f"# {name} = {toml_value(info.default)}\n")
            out.extend(line + "\n" for line in textwrap.wrap(
                f"{info.description} [{type_text(info)}]", WIDTH, initial_indent="#     ",
                subsequent_indent="#     ", break_on_hyphens=False))
    return "".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*")


def markdown_reference() -> str:
    """The README's reference: one table per section, every key, type, default and meaning."""
    out = ["<!-- generated from locft/config.py by `python -m locft.config_docs README.md`; "
           "edit the schemas, not this block -->\n"]
    for section, cls in SECTIONS.items():
        doc = " ".join((cls.__doc__ or "").split("\n\n")[0].split())
        out.append(f"\n### `[{section}]`\n\n{doc}\n\n| Key | Takes | Default | Meaning |\n|---|---|---|---|\n")
        for name, info in fields_of(cls).items():
            default = "unset" if info.default is None else f"`{toml_value(info.default)}`"
            out.append(f"| `{name}` | {_cell(type_text(info, code=True))} | {_cell(default)} "
                       f"| {_cell(info.description or '')} |\n")
    return "".join(out)


def update_readme(text: str) -> str:
    """`text` (README.md) with the block between the config markers regenerated."""
    pattern = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"no {BEGIN} ... {END} block to regenerate")
    return pattern.sub(lambda _: f"{BEGIN}\n{markdown_reference()}{END}", text, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locft.config_docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("readme", type=Path, help="the README.md whose config block to regenerate")
    parser.add_argument("--check", action="store_true", help="only say whether it is current (exit 1 if not)")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = update_readme(text)
    if new == text:
        print(f"{args.readme}: the configuration reference is current")
        return 0
    if args.check:
        print(f"{args.readme}: the configuration reference is stale; run python -m locft.config_docs {args.readme}")
        return 1
    args.readme.write_text(new, encoding="utf-8")
    print(f"{args.readme}: the configuration reference regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
