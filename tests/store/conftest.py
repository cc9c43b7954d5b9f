from __future__ import annotations

from typing import Iterator

import pytest

from locft.home import Home
from locft.store import Store


@pytest.fixture
def store(home: Home) -> Iterator[Store]:
    s = Store.open(home, create=True)
    yield s
    s.close()
