"""The rules of the config schemas (locft.config) in words: bounds as text for the template and
the README, and pydantic's validation errors as one ConfigError message naming each key."""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import ValidationError
from pydantic.fields import FieldInfo


def fields_of(cls: type) -> dict[str, FieldInfo]:
    """The keys of a section (or of the whole file): name -> pydantic's FieldInfo."""
    return dict(cls.__pydantic_fields__)  # type: ignore[attr-defined]  # set by pydantic.dataclasses


_BOUNDS = {annotated_types.Gt: "gt", annotated_types.Ge: "ge", annotated_types.Lt: "lt",
           annotated_types.Le: "le", annotated_types.MinLen: "min_length"}


def bounds_of(metadata: Any) -> dict[str, Any]:
    """The bounds among a field's (or an Annotated type's) metadata: {'gt': 0, 'lt': 1}."""
    bounds: dict[str, Any] = {}
    for rule in metadata:
        if isinstance(rule, FieldInfo):
            bounds |= bounds_of(rule.metadata)
        for kind, name in _BOUNDS.items():
            if isinstance(rule, kind):
                bounds[name] = getattr(rule, name)
    return bounds


def describe_bounds(bounds: dict[str, Any]) -> str:
    """{'ge': 0, 'lt': 1} -> 'in [0, 1)'; {'ge': 1} -> '>= 1'; {'min_length': 1} -> 'a non-empty list'."""
    low = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    parts = []
    if low and high:
        parts.append(f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}")
    elif low:
        parts.append(f"{'>=' if low[0] == '[' else '>'} {low[1]:g}")
    elif high:
        parts.append(f"{'<=' if high[0] == ']' else '<'} {high[1]:g}")
    if bounds.get("min_length"):
        parts.append("a non-empty list" if bounds["min_length"] == 1 else f"a list of at least {bounds['min_length']}")
    return ", ".join(parts)


def explain(exc: ValidationError, cls: type, where: str = "") -> str:
    """pydantic's errors as one message in locft's words, each naming its key (`where.key`)."""
    unknown: dict[tuple[Any, ...], list[str]] = {}
    problems: list[str] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "unexpected_keyword_argument":
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        problems.append(_problem(err, cls, where))
    for table, keys in unknown.items():
        owner = _table_class(cls, table)
        name = ".".join(filter(None, (where, *map(str, table))))
        prefix = f"[{name}] " if name else ""
        problems.insert(0, f"{prefix}unknown key(s) {', '.join(sorted(keys))}; "
                           f"known: {', '.join(sorted(fields_of(owner)))}")
    return "; ".join(dict.fromkeys(problems))


def _table_class(cls: type, table: tuple[Any, ...]) -> type:
    for name in table:
        cls = fields_of(cls)[name].annotation  # type: ignore[assignment]  # a table's annotation is its class
    return cls


def _problem(err: Any, cls: type, where: str) -> str:
    loc, kind, value, ctx = tuple(err["loc"]), err["type"], err["input"], err.get("ctx") or {}
    if kind == "value_error":  # the schema's own checks write their whole message
        return str(ctx.get("error", err["msg"]))
    cut = next((i for i, part in enumerate(loc) if isinstance(part, int)), len(loc))
    keys, index = loc[:cut], "".join(f"[{i}]" for i in loc[cut:] if isinstance(i, int))
    name = ".".join(filter(None, (where, *map(str, keys)))) + index
    if kind == "dataclass_type":
        return f"[{name}] must be a table, got {value!r}"
    types = {"float_type": "a number", "int_type": "an integer", "bool_type": "true or false",
             "string_type": "a string", "tuple_type": "a list"}
    if kind in types:
        return f"{name} must be {types[kind]}, got {value!r}"
    info = fields_of(_table_class(cls, keys[:-1])).get(str(keys[-1])) if keys else None
    if kind == "literal_error" and info is not None:
        return f"{name} must be one of {', '.join(map(repr, literal_choices(info.annotation)))}, got {value!r}"
    bounds = bounds_of(info.metadata) if info is not None and not index else {}
    bounds = bounds or {k: v for k, v in ctx.items() if k in _BOUNDS.values()}
    if bounds:
        unset = " (or unset)" if info is not None and info.default is None and not index else ""
        return f"{name} must be {describe_bounds(bounds)}{unset}, got {value!r}"
    return f"{name}: {err['msg'].lower()}, got {value!r}"


def literal_choices(annotation: Any) -> tuple[Any, ...]:
    """The values a Literal (or an optional one) allows; () for any other type."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for arg in get_args(annotation):
        if choices := literal_choices(arg):
            return choices
    return ()
