from __future__ import annotations

import pytest

from locft.engine.generate import cut_answer
from locft.text import exact_match, normalize_answer


@pytest.mark.parametrize(
    ("generated", "answer"),
    [
        ("Paris", "Paris"),
        ("Paris.", "Paris"),
        ("Paris. It is the capital.", "Paris"),
        ("St. Louis", "St. Louis"),
        ("St. Louis. A city.", "St. Louis"),
        ("the U.S. Army", "the U.S. Army"),
        ("U.S.", "U.S."),
        ("3.5 million", "3.5 million"),
        ("Chichester River\nmore text", "Chichester River"),
        ("  spaced  ", "spaced"),
        ("", ""),
    ],
)
def test_cut_answer(generated: str, answer: str) -> None:
    assert cut_answer(generated) == answer


def test_normalized_exact_match() -> None:
    assert exact_match("The Beatles", "beatles")
    assert exact_match("U.S.", "US")
    assert not exact_match("Paris France", "Paris")
    assert normalize_answer("  A  Tale, of Two ") == "tale of two"
