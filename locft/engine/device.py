"""Where the model runs and how much work each pass gets there.

`model.device` names the device: "auto" (a CUDA GPU when torch sees one, else the CPU),
"cpu", "cuda" (the current GPU) or "cuda:N". A model whose weights do not fit the free memory
of one GPU is spread over all visible GPUs with accelerate's device_map="auto" when
`model.device` is "auto" (`load_plan`); only the localized tensors train, on the GPU their layer
sits on.

Pass sizes: on the CPU the measured values stay (32 rows / 1,024 padded tokens per
forward/backward, generation batches of 32). On CUDA they are sized from the device's free
memory, since the CPU sizes leave most of a GPU idle (issue 29: 4.6x the reference loop per
edit-epoch at 100 rows / 4,096 tokens against 1.4x at 32 / 1,024 on an H200, Llama-3-8B shape).
The estimates are deliberately conservative: each counts every activation a decoder layer keeps
for backward (or each key and value a generated token adds) and uses a quarter of what is free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from locft.config import validate_device
from locft.errors import ModelLoadError

CPU_MICRO_BATCH_SIZE = 32  # measured on the embedded model (docs/experiments/quality/phase_memory.jsonl)
CPU_MICRO_BATCH_TOKENS = 1024
CPU_GENERATION_BATCH = 32
_FREE_SHARE = 0.25  # of the free device memory, per pass: the rest is headroom for the allocator
_MAX_PASS_TOKENS = 65536
_MAX_PASS_ROWS = 1024
_ROWS_PER_TOKENS = 16  # rows allowed per pass: tokens / 16 (ZsRE rows run 15-60 tokens)
_MAX_GENERATION_BATCH = 512  # the H200 measurement: 3.3 s at 512 against 4.4 at 256 (512 x 32)
_FIT_SHARE = 0.85  # a model "fits" one GPU when its weights take at most this share of the free memory

def resolve_device(spec: str) -> torch.device:
    """The one device `spec` names on this machine (auto: the current GPU when there is one)."""
    validate_device(spec)
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ModelLoadError(f"model.device is {spec!r} but torch sees no CUDA device")
    if spec in ("auto", "cuda"):
        return torch.device("cuda", torch.cuda.current_device())
    index = int(spec.split(":", 1)[1])
    if index >= torch.cuda.device_count():
        raise ModelLoadError(f"model.device is {spec!r} but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def free_bytes(device: torch.device) -> int:
    """Memory a new allocation on `device` can take: the driver's free memory plus what torch's
    caching allocator holds unused. 0 on the CPU (not sized from memory)."""
    if device.type != "cuda":
        return 0
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def should_spread(weight_bytes: int, free_per_gpu: list[int]) -> bool:
    """Spread the model over the GPUs when it does not fit the first one and more than one is visible."""
    return len(free_per_gpu) > 1 and weight_bytes > _FIT_SHARE * free_per_gpu[0]


@dataclass(frozen=True)
class LoadPlan:
    """How to load: on one device, or spread with accelerate (device_map="auto")."""

    device: torch.device  # where inputs go: the single device, or the first GPU when spread
    device_map: str | None  # None: one device; "auto": accelerate spreads the layers


def load_plan(spec: str, weight_bytes: int) -> LoadPlan:
    """The load plan for `model.device` and a model of `weight_bytes` (in the dtype it loads in)."""
    device = resolve_device(spec)
    if spec == "auto" and device.type == "cuda":
        free = [free_bytes(torch.device("cuda", i)) for i in range(torch.cuda.device_count())]
        if should_spread(weight_bytes, free):
            return LoadPlan(torch.device("cuda", 0), "auto")
    return LoadPlan(device, None)


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's first parameter lives (its layer's device under a device_map)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def model_devices(model: torch.nn.Module) -> list[torch.device]:
    """The distinct devices holding the model's parameters, in first-seen order."""
    seen: dict[torch.device, None] = {}
    for p in model.parameters():
        seen.setdefault(p.device, None)
    return list(seen)


def _min_free(devices: Iterable[torch.device]) -> int:
    return min((free_bytes(d) for d in devices if d.type == "cuda"), default=0)


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(x).bit_length() - 1) if x >= 1 else 0


def _dims(config: Any) -> tuple[int, int, int, int, int, int]:
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    inter = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 0) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(config, "head_dim", 0) or hidden // heads)
    return hidden, layers, inter, heads, kv_heads, head_dim


def training_bytes_per_token(config: Any, layers_above: int, element_bytes: int, vocab_logits: bool) -> int:
    """Activation memory one padded token takes in a training pass through `layers_above` decoder
    layers: per layer the inputs of both norms and their float32 statistics, q, k, v, the
    attention output, and the MLP's gate, up and product (12 hidden + 4 intermediate elements,
    rounded up), plus full-vocabulary float32 logits and their log-softmax where every position
    gets logits (the reference loop)."""
    hidden, _layers, inter, *_ = _dims(config)
    per_layer = (12 * hidden + 4 * inter) * element_bytes + 4 * hidden * 4
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    return layers_above * per_layer + (vocab * (element_bytes + 8) if vocab_logits else 0)


@dataclass(frozen=True)
class PassSizes:
    rows: int
    tokens: int
    basis: str  # how they were chosen, for the record


def training_pass_sizes(model: torch.nn.Module, device: torch.device, layers_above: int, element_bytes: int,
                        vocab_logits: bool = False) -> PassSizes:
    """Rows and padded tokens per forward/backward pass on this device (CPU: the measured 32 / 1,024)."""
    if device.type != "cuda":
        return PassSizes(CPU_MICRO_BATCH_SIZE, CPU_MICRO_BATCH_TOKENS, "cpu default")
    free = _min_free(model_devices(model))
    per_token = max(1, training_bytes_per_token(model.config, max(1, layers_above), element_bytes, vocab_logits))
    tokens = min(_MAX_PASS_TOKENS, max(CPU_MICRO_BATCH_TOKENS, _pow2_floor(_FREE_SHARE * free / per_token)))
    rows = min(_MAX_PASS_ROWS, max(CPU_MICRO_BATCH_SIZE, tokens // _ROWS_PER_TOKENS))
    return PassSizes(rows, tokens, f"cuda: {_FREE_SHARE:.0%} of {free / 2**30:.1f} GiB free, "
                                   f"{per_token / 2**20:.2f} MiB per token")


def generation_bytes_per_row(config: Any, tokens: int, element_bytes: int) -> int:
    """Memory one generated row takes: keys and values of every layer at `tokens` positions, the
    prefill's activations of one layer and its float32 logits at every prompt position (an upper
    bound: generation asks the head for the last position only)."""
    hidden, layers, inter, _heads, kv_heads, head_dim = _dims(config)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    kv = 2 * layers * kv_heads * head_dim * element_bytes * tokens
    prefill = tokens * ((6 * hidden + 3 * inter) * element_bytes + vocab * 4)
    return kv + prefill


def generation_batch_size(model: torch.nn.Module, device: torch.device, tokens: int) -> int:
    """Prompts per greedy-generation batch on this device for rows of up to `tokens` positions
    (prompt + new tokens): the CPU's 32, or on CUDA as many as a quarter of the free memory holds
    (a power of two from 32 to 512)."""
    if device.type != "cuda":
        return CPU_GENERATION_BATCH
    element_bytes = max((p.element_size() for p in model.parameters()), default=4)
    per_row = max(1, generation_bytes_per_row(model.config, max(1, tokens), element_bytes))
    fits = _pow2_floor(_FREE_SHARE * _min_free(model_devices(model)) / per_row)
    return min(_MAX_GENERATION_BATCH, max(CPU_GENERATION_BATCH, fits))
