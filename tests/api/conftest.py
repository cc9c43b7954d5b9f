"""A real API server on an ephemeral 127.0.0.1 port over a served tiny-model home (per module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from locft.api import ApiServer, start_api_server
from locft.config import ModelConfig
from locft.engine.model_io import LoadedModel, load_base
from locft.home import Home
from tests.serving_helpers import make_served_home


@pytest.fixture(scope="package")
def loaded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_base(ModelConfig(path=str(tiny_model_dir)), tmp_path_factory.mktemp("load-home"))


@pytest.fixture(scope="package")
def served_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, loaded: LoadedModel) -> Home:
    return make_served_home(tmp_path_factory.mktemp("serve") / "home", tiny_model_dir, loaded)


@pytest.fixture(scope="package")
def api(served_home: Home, loaded: LoadedModel) -> Iterator[ApiServer]:
    server = start_api_server(served_home, port=0, loaded=loaded, poll_s=0.2)
    yield server
    server.shutdown()
