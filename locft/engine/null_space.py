"""Keeping the change of a tuned matrix out of the directions unrelated prompts use.

A tuned linear weight W [out, in] maps each position's input x to x W^T, so a change D moves
that output by x D^T. If D only acts on directions that unrelated inputs barely occupy
(D = D P, with P the projector onto the low-energy eigen-directions of sum x x^T over
unrelated prompts), those prompts' outputs hardly move while an edit's own inputs, which differ
from them, still can. The idea is AlphaEdit's null-space projection (Fang et al., 2025), here
applied to the breadth-first fine-tuning change after every step instead of to a closed-form
edit. The unrelated prompts are the replay pool's (prompt + the base model's continuation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from locft.engine.data import Example, collate
from locft.engine.model_io import LoadedModel
from locft.errors import ConfigError

_BATCH = 64


class _Done(Exception):
    """Raised from the last tuned weight's hook: the layers above it need not run."""


def owning_linear(model: torch.nn.Module, name: str) -> torch.nn.Linear:
    """The nn.Linear whose `weight` the parameter `name` is; anything else cannot be projected."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr != "weight" or not isinstance(module, torch.nn.Linear):
        raise ConfigError(f"edit.null_space_energy needs linear weights; {name} is not one")
    return module


def input_second_moments(loaded: LoadedModel, examples: Sequence[Example],
                         names: Sequence[str]) -> dict[str, torch.Tensor]:
    """sum over every real (non-pad) position of x x^T, x = the input of each tuned linear weight."""
    modules = {n: owning_linear(loaded.model, n) for n in names}
    moments = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in modules.items()}
    mask: list[torch.Tensor] = []
    seen: set[str] = set()

    def hook_for(name: str) -> Callable[[torch.nn.Module, tuple], None]:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            x = args[0].detach().float() * mask[0].unsqueeze(-1)
            flat = x.reshape(-1, x.shape[-1])
            moments[name] += (flat.T @ flat).to("cpu", torch.float64)  # float32 per batch, summed in float64
            seen.add(name)
            if len(seen) == len(modules):  # nothing above the last tuned weight is needed
                raise _Done
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in modules.items()]
    decoder = loaded.model.get_decoder()
    try:
        with torch.no_grad():
            for b in range(0, len(examples), _BATCH):
                batch = collate(examples[b : b + _BATCH], loaded.tokenizer.pad_token_id, loaded.device)
                mask[:] = [batch.attention_mask.float()]
                seen.clear()
                try:
                    decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
                except _Done:
                    pass
    finally:
        for h in handles:
            h.remove()
    return moments


def low_energy_projector(moment: torch.Tensor, energy: float) -> tuple[torch.Tensor, int]:
    """P = I - U U^T, U the fewest top eigen-directions holding `energy` of the trace; and |U|."""
    eigenvalues, vectors = torch.linalg.eigh(moment)  # ascending
    eigenvalues, vectors = eigenvalues.flip(0).clamp_min(0), vectors.flip(1)
    share = eigenvalues.cumsum(0) / eigenvalues.sum().clamp_min(1e-300)
    rank = int((share < energy).sum()) + 1 if energy > 0 else 0
    top = vectors[:, :rank]
    projector = torch.eye(moment.shape[0], dtype=moment.dtype) - top @ top.T
    return projector.to(torch.float32), rank


def project_change(params: Sequence[torch.nn.Parameter], origins: Sequence[torch.Tensor],
                   projectors: Sequence[torch.Tensor]) -> None:
    """W <- W0 + (W - W0) P for each tuned weight, in place."""
    with torch.no_grad():
        for p, origin, projector in zip(params, origins, projectors):
            p.copy_(origin + (p - origin) @ projector.to(p.device, p.dtype))
