"""Scoped parameter swaps: the only way locft changes a loaded model's weights.

Swapping `param.data` is O(1) and never writes into the base storage, so the base tensors
stay intact and a swap back is exact (training, evaluation and serving all rely on this).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch

from locft.errors import SnapshotError


def parameters_by_name(model: torch.nn.Module, names: list[str] | tuple[str, ...]) -> dict[str, torch.nn.Parameter]:
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise SnapshotError(f"the model has no parameter(s) {missing}")
    return {n: params[n] for n in names}


def swap_in(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Point each named parameter at the given tensor; return the tensors they pointed at before."""
    params = parameters_by_name(model, list(tensors))
    for name, tensor in tensors.items():
        p = params[name]
        if tuple(tensor.shape) != tuple(p.shape):
            raise SnapshotError(f"{name}: shape {tuple(tensor.shape)} does not fit the model's {tuple(p.shape)}")
    previous = {}
    for name, tensor in tensors.items():
        p = params[name]
        previous[name] = p.data
        p.data = tensor.to(device=p.device, dtype=p.dtype)
    return previous


@contextmanager
def applied(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block the model uses `tensors`; afterwards exactly its previous weights."""
    previous = swap_in(model, tensors)
    try:
        yield
    finally:
        swap_in(model, previous)
