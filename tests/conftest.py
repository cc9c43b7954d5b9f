"""Shared fixtures: a fresh $LOCFT_HOME per test (real directories, real SQLite files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from locft.home import Home
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny random Llama with the embedded tokenizer per session (tests only read it)."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    """An initialized home tree (no database yet) that $LOCFT_HOME points to."""
    root = tmp_path / "home"
    monkeypatch.setenv("LOCFT_HOME", str(root))
    monkeypatch.setenv("LOCFT_AUTHOR", "tester")
    h = Home.resolve(root)
    h.create()
    return h


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from threads, and on a busy 2-core machine two threads per
    process make each round ~10x slower (measured: 1-2 s vs 20-28 s). Use with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
