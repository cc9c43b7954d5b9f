from __future__ import annotations

from pathlib import Path

import pytest

from locft.config import ModelConfig
from locft.engine.model_io import LoadedModel, load_base


@pytest.fixture()
def tiny(tiny_model_dir: Path, tmp_path: Path) -> LoadedModel:
    """A freshly loaded tiny model (cheap: ~0.2 s), so tests cannot leak weight changes."""
    return load_base(ModelConfig(path=str(tiny_model_dir)), tmp_path / "home")
