"""The precision policy of training: which dtype the forward/backward computes in.

edit.compute_dtype "auto" becomes the model's own half precision, else bfloat16 where the device
computes it natively, else float32. A float32 model computing in bfloat16 runs under autocast;
the tuned tensors stay float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import torch

from locft.config import ComputeDtype
from locft.engine.model_io import LoadedModel
from locft.errors import ConfigError


def resolve_compute_dtype(compute_dtype: ComputeDtype, loaded: LoadedModel) -> ComputeDtype:
    """edit.compute_dtype with "auto" decided for this model and device."""
    if compute_dtype != "auto":
        return compute_dtype
    if loaded.dtype != torch.float32:
        # a half-precision model computes in its own dtype (model.dtype: one of the same names)
        return cast(ComputeDtype, str(loaded.dtype).removeprefix("torch."))
    return "bfloat16" if native_bf16(loaded.device) else "float32"


def autocast_dtype(compute_dtype: ComputeDtype, loaded: LoadedModel) -> torch.dtype | None:
    """The autocast dtype for edit.compute_dtype on this model and device; None = no autocast."""
    compute_dtype = resolve_compute_dtype(compute_dtype, loaded)
    if compute_dtype == "float32" or loaded.dtype != torch.float32:
        return None  # float32, or a half-precision model that already computes in its own dtype
    if compute_dtype == "float16":
        raise ConfigError("edit.compute_dtype = 'float16' on a float32 model would need loss scaling; "
                          "use 'bfloat16' or 'float32'")
    return torch.bfloat16


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matmuls natively (faster than float32, not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # private helpers, present in torch >= 2.1; any failure means "not known to be native"
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


@contextmanager
def computing_in(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to `dtype` on `device`; None: the model's own dtype (no autocast)."""
    with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        yield
