"""What an lm-eval run would otherwise change in the caller's process, saved and restored: RNG
states, HF environment and offline flags, lm-eval's log level and progress bars, the model's
training flags and the tokenizer's pad token. One run at a time per process (`RUN_LOCK`)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# One run at a time per process: a run changes process-wide state (environment variables,
# datasets/hub offline flags, lm-eval's log level and bars) and restores it afterwards.
RUN_LOCK = threading.RLock()


@contextlib.contextmanager
def _set_attr(obj: Any, name: str, value: Any) -> Iterator[None]:
    missing = object()
    old = getattr(obj, name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if old is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, old)


@contextlib.contextmanager
def _set_env(values: Mapping[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def saved_rng() -> Iterator[None]:
    import numpy as np
    import torch

    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def saved_model_state(model: torch.nn.Module, tokenizer: Any) -> Iterator[None]:
    """HFLM puts the model in eval mode and gives a tokenizer without one a pad token: undone."""
    flags = [(m, m.training) for m in model.modules()]
    pad_token = getattr(tokenizer, "pad_token", None)
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
        if pad_token is None and getattr(tokenizer, "pad_token", None) is not None:
            tokenizer.pad_token = None


@contextlib.contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs at INFO/WARNING and draws progress bars: the caller's progress callbacks replace
    them. `CapabilityLM` turns off the model's bars; the bar `Task.build_all_requests` draws has no
    switch, so that module's `tqdm` is the one lm-eval global replaced, for the run only."""
    import functools

    import lm_eval.api.task as task_module

    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with _set_attr(task_module, "tqdm", functools.partial(task_module.tqdm, disable=True)):
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def hf_environment(cache_dir: Path, offline: bool) -> Iterator[None]:
    """HF caches under `cache_dir`; offline unless a passthrough task needs the hub.

    datasets/huggingface_hub read these variables at import time, so their module constants are
    switched too, then restored.
    """
    import datasets.config as dsconfig

    hf_cache = cache_dir / "hf_datasets"
    env = {"HF_DATASETS_CACHE": str(hf_cache)}
    if offline:
        env |= {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(_set_env(env))
        stack.enter_context(_set_attr(dsconfig, "HF_DATASETS_CACHE", hf_cache))
        if offline:
            for attr in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
                if hasattr(dsconfig, attr):
                    stack.enter_context(_set_attr(dsconfig, attr, True))
            try:
                import huggingface_hub.constants as hub_constants

                stack.enter_context(_set_attr(hub_constants, "HF_HUB_OFFLINE", True))
            except ImportError:  # pragma: no cover - datasets depends on it
                pass
        yield
