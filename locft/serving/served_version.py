"""A version ready to serve (its tuned tensors on the model's device) and the API's model names
for versions: "locft" (the active version) and "locft-v<N>"."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from locft.errors import LocftError

if TYPE_CHECKING:
    import torch

    from locft.engine.scope import Scope

MODEL_PREFIX = "locft"  # API model names: "locft" (the active version) and "locft-v<N>"


class ServingError(LocftError):
    """A request the server cannot run as asked (bad model name, too long for the context...)."""


def model_name(version_id: int) -> str:
    return f"{MODEL_PREFIX}-v{version_id}"


def parse_model_name(name: str) -> int | None:
    """'locft' -> None (the active version); 'locft-v3' -> 3; anything else: ServingError."""
    if name == MODEL_PREFIX:
        return None
    prefix = MODEL_PREFIX + "-v"
    digits = name[len(prefix):]
    # isascii: str.isdigit() is also true for '²' or '١', which int() refuses or reads as another number
    if name.startswith(prefix) and digits.isascii() and digits.isdigit() and len(digits) < 10:
        return int(name[len(prefix):])
    raise ServingError(f"unknown model {name!r}: use {MODEL_PREFIX!r} (the promoted version) or "
                       f"'{MODEL_PREFIX}-v<N>' (version N; `locft versions list` shows them)")


@dataclass(frozen=True)
class ServedVersion:
    """A version ready to serve: its tuned tensors (a private copy on the model's device/dtype)."""

    id: int
    tensors: Mapping[str, torch.Tensor]
    prompt_format: str  # 'chat' or 'raw': what its facts were trained with (and asked with)
    snapshot_sha256: str | None
    base_fingerprint: str
    loaded_at: float = field(default_factory=time.time)
    # which prompts its tensors answer (engine.scope); None: every prompt (serve.scope = "always",
    # or a snapshot built without a scope)
    scope: Scope | None = None

    @property
    def name(self) -> str:
        return model_name(self.id)

    @property
    def fingerprint(self) -> str:
        """OpenAI's `system_fingerprint`: which weights answered (version + snapshot or base hash)."""
        digest = self.snapshot_sha256 or self.base_fingerprint
        return f"{self.name}-{digest[:12]}"



@dataclass(frozen=True)
class Answer:
    """What `ask` returns: the version that answered and how the prompt was shown to it."""

    version_id: int
    prompt_format: str
    text: str
    finish_reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version_id, "model": model_name(self.version_id),
                "prompt_format": self.prompt_format, "text": self.text, "finish_reason": self.finish_reason}
