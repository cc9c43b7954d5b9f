"""Hypothesis strategies for hostile input: any unicode (surrogates and controls included), huge
strings, deep JSON, wrong types, negative and huge numbers, and strings that look like numbers
to `str.isdigit()` but not to `int()` (superscripts)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# Values that broke (or could break) something somewhere: kept as explicit examples.
SPECIAL_STRINGS = [
    "", " ", "\x00", "\ud800", "a\udce9b", "\u202e", "\ufeff", "\n", "\t\r", "²", "١٢", "locft-v²", "locft-v١",
    "locft-v99999999999999999999999", "99999999999999999999999", "-1", "1e9", "NaN", "null", "0x10", "🦄" * 3,
    "Ω" * 2001, "x" * 301, "x" * 9000, "../../etc/passwd", "'; DROP TABLE fact; --", "%s%n", "{0}", "\\",
]
SPECIAL_NUMBERS: list[Any] = [
    0, -1, 1, 2, 7, 2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30, -(10**30), 10**4000,
    0.5, -0.0, 1e308, -1e308, float("inf"), float("-inf"), float("nan"), True, False,
]

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
huge_text = st.sampled_from([2001, 9000, 70_000, 400_000]).map(lambda n: "é" * n)
strings = st.one_of(any_text, st.sampled_from(SPECIAL_STRINGS), huge_text)
numbers = st.one_of(st.sampled_from(SPECIAL_NUMBERS), st.integers(), st.floats())
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)


class Deep:
    """JSON nested `depth` levels deep: too deep for json.dumps, so `dumps` writes it as text."""

    def __init__(self, depth: int, kind: str) -> None:
        self.depth, self.kind = depth, kind

    def text(self) -> str:
        if self.kind == "list":
            return "[" * self.depth + "1" + "]" * self.depth
        return '{"a":' * self.depth + "1" + "}" * self.depth

    def __repr__(self) -> str:
        return f"Deep({self.depth}, {self.kind!r})"


deep = st.builds(Deep, st.sampled_from([10, 200, 900, 1100, 5000, 50_000]), st.sampled_from(["list", "dict"]))
json_values = st.one_of(
    scalars,
    deep,
    st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                 | st.dictionaries(any_text, children, max_size=4), max_leaves=12),
)


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """A valid body with 1-3 fields replaced by hostile values, dropped, or added."""
    body = dict(valid)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*keys, "unexpected"]))
        action = draw(st.sampled_from(["replace", "replace", "replace", "drop"]))
        if action == "drop":
            body.pop(key, None)
        else:
            body[key] = draw(json_values)
    return body


def dumps(value: Any) -> str:
    """json.dumps, except that Deep values are spliced in as text (and NaN/Infinity are kept:
    Python's own JSON parser, the server's, accepts them, so a client can send them)."""
    marks: dict[str, Deep] = {}

    def swap(v: Any) -> Any:
        if isinstance(v, Deep):
            key = f"@@deep{len(marks)}@@"
            marks[key] = v
            return key
        if isinstance(v, list):
            return [swap(x) for x in v]
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        return v

    text = json.dumps(swap(value))
    for key, d in marks.items():
        text = text.replace(f'"{key}"', d.text())
    return text
