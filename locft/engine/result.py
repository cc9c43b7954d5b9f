"""What an edit produces (EditResult: the trained tensors and how training went) and what it
reports while it runs (TrainProgress)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from locft.config import EditConfig
from locft.engine.targets import EditLocation


@dataclass(frozen=True)
class TrainProgress:
    """The engine's progress report while an edit runs: building the activation cache, then training."""

    phase: str  # "cache" or "train"
    epoch: int  # 1-based; for depth-first, the fact number
    max_epochs: int
    step: int  # steps done in this epoch
    steps_per_epoch: int
    loss: float | None
    edits_per_second: float


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    mean_loss: float  # the edit loss (replay excluded): what skip/stop thresholds compare
    seconds: float
    steps: int
    skipped: int
    replay_loss: float | None = None


@dataclass
class EditResult:
    """The trained tensors (detached CPU copies) and how training went."""

    tensors: dict[str, torch.Tensor]
    location: EditLocation
    prompt_format: str
    lr: float
    forward_mode: str  # the mode actually used (after the first-batch check)
    epochs: list[EpochStats] = field(default_factory=list)
    converged: bool = False
    cache_seconds: float = 0.0
    # after the cache, before the first step: the forward-mode check, the base model's
    # distribution on the replay prompts, null-space projectors
    setup_seconds: float = 0.0
    train_seconds: float = 0.0
    steps: int = 0
    n_facts: int = 0
    n_replay: int = 0  # replay pool size
    n_augmented: int = 0  # prefixed copies of the facts (edit.augment_prefixes per fact)
    shared_prefix_tokens: int = 0  # leading tokens run once per step for the whole batch (cached mode)
    config: EditConfig | None = None  # with per-model defaults resolved: what was actually used
    examples_seen: int = 0  # fact forward passes: edits x epochs for breadth-first
    compute_dtype: str = "float32"  # what the training forward/backward ran in (autocast resolved)
    # per tuned tensor: input directions its change was kept out of (edit.null_space_energy)
    null_space_ranks: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"  # where training ran (the input device when the model is spread)

    @property
    def edits_x_epochs_per_second(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "location": self.location.describe(),
            "parameters": list(self.tensors),
            "prompt_format": self.prompt_format,
            "lr": self.lr,
            "batch_size": self.config.batch_size if self.config else None,
            # rows and padded tokens per forward/backward: chosen per device unless configured
            "device": self.device,
            "micro_batch_size": self.config.micro_batch_size if self.config else None,
            "micro_batch_tokens": self.config.micro_batch_tokens if self.config else None,
            "forward_mode": self.forward_mode,
            "compute_dtype": self.compute_dtype,
            "epochs": len(self.epochs),
            "converged": self.converged,
            "final_loss": self.epochs[-1].mean_loss if self.epochs else None,
            "loss_per_epoch": [round(e.mean_loss, 6) for e in self.epochs],
            "replay_loss_per_epoch": (
                [None if e.replay_loss is None else round(e.replay_loss, 6) for e in self.epochs]
                if self.n_replay else None
            ),
            "replay_pool": self.n_replay,
            "augmented_rows": self.n_augmented,
            "shared_prefix_tokens": self.shared_prefix_tokens,
            "steps": self.steps,
            "cache_seconds": round(self.cache_seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
            "train_seconds": round(self.train_seconds, 3),
            "seconds_per_epoch": round(self.train_seconds / len(self.epochs), 3) if self.epochs else None,
            "edits_x_epochs_per_second": round(self.edits_x_epochs_per_second, 3),
            "null_space_ranks": self.null_space_ranks or None,
        }


TrainProgressCallback = Callable[[TrainProgress], None]
