"""Device choice and per-device pass sizes (engine.device), model ids from the local HF cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from locft.config import EditConfig, LocftConfig, ModelConfig, from_dict
from locft.engine import device as dev
from locft.engine.model_io import LoadedModel, load_base, local_model_path
from locft.engine.resolve import resolve_edit_config
from locft.errors import ConfigError, ModelLoadError

# Llama-3-8B's shape, for the sizing arithmetic (no weights)
LLAMA3_8B = SimpleNamespace(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
                            num_key_value_heads=8, vocab_size=128256)
GiB = 2**30


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_model_device_accepts_cuda_indices(spec: str) -> None:
    assert ModelConfig(device=spec).device == spec
    assert from_dict(LocftConfig, {"model": {"device": spec}}).model.device == spec


@pytest.mark.parametrize("spec", ["gpu", "cpu:0", "cuda:", "cuda:x", "CUDA", "auto:1", ""])
def test_model_device_refuses_other_names(spec: str) -> None:
    with pytest.raises(ConfigError, match="model.device"):
        ModelConfig(device=spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answers of a machine without CUDA")
def test_devices_resolve_on_a_machine_without_cuda() -> None:
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device("cpu") == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            dev.resolve_device(spec)
    assert dev.load_plan("auto", 10**12) == dev.LoadPlan(torch.device("cpu"), None)


def test_a_model_spreads_only_when_it_does_not_fit_one_of_several_gpus() -> None:
    assert not dev.should_spread(100 * GiB, [80 * GiB])  # one GPU: nothing to spread over
    assert dev.should_spread(100 * GiB, [80 * GiB, 80 * GiB])
    assert not dev.should_spread(16 * GiB, [80 * GiB, 80 * GiB])
    assert dev.should_spread(75 * GiB, [80 * GiB, 80 * GiB])  # weights alone would leave no room to train


def test_cpu_keeps_the_measured_pass_and_generation_sizes() -> None:
    model = SimpleNamespace(config=LLAMA3_8B, parameters=lambda: iter(()))
    sizes = dev.training_pass_sizes(model, torch.device("cpu"), 10, 2)  # type: ignore[arg-type]
    assert (sizes.rows, sizes.tokens) == (32, 1024)
    assert dev.generation_batch_size(model, torch.device("cpu"), 80) == 32  # type: ignore[arg-type]


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, free: int) -> SimpleNamespace:
    """A model 'on' a GPU with `free` bytes free (the sizing reads only the config and free memory)."""
    monkeypatch.setattr(dev, "_min_free", lambda devices: free)
    weight = SimpleNamespace(element_size=lambda: 2, device=torch.device("cuda", 0))
    return SimpleNamespace(config=LLAMA3_8B, parameters=lambda: iter([weight]))


def test_cuda_pass_sizes_grow_with_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda", 0)
    per_token = dev.training_bytes_per_token(LLAMA3_8B, 10, 2, vocab_logits=False)
    # 10 layers above layer 22 of Llama-3-8B in bf16: 2.66 MiB of activations per padded token
    assert per_token == 10 * ((12 * 4096 + 4 * 14336) * 2 + 16 * 4096)
    big = dev.training_pass_sizes(_fake_gpu(monkeypatch, 124 * GiB), cuda, 10, 2)  # type: ignore[arg-type]
    # a quarter of 124 GiB holds 11,900 tokens: the power of two below is 8,192, rows 8,192 / 16
    assert (big.rows, big.tokens) == (512, 8192) and "cuda" in big.basis
    small = dev.training_pass_sizes(_fake_gpu(monkeypatch, 2 * GiB), cuda, 10, 2)  # type: ignore[arg-type]
    assert (small.rows, small.tokens) == (64, 1024)  # tokens never below the CPU's 1,024; rows 1,024 / 16
    reference = dev.training_pass_sizes(_fake_gpu(monkeypatch, 124 * GiB), cuda, 32, 2,  # type: ignore[arg-type]
                                        vocab_logits=True)
    assert reference.tokens < big.tokens  # logits at every position and all layers cost more per token


def test_cuda_generation_batch_from_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda", 0)
    assert dev.generation_batch_size(_fake_gpu(monkeypatch, 124 * GiB), cuda, 80) == 512  # type: ignore[arg-type]
    per_row = dev.generation_bytes_per_row(LLAMA3_8B, 80, 2)
    free = int(4 * 100 * per_row)  # a quarter holds 100 rows: the power of two below is 64
    assert dev.generation_batch_size(_fake_gpu(monkeypatch, free), cuda, 80) == 64  # type: ignore[arg-type]
    assert dev.generation_batch_size(_fake_gpu(monkeypatch, GiB // 8), cuda, 80) == 32  # type: ignore[arg-type]


def test_resolved_edit_config_keeps_cpu_pass_sizes_and_configured_ones(tiny: LoadedModel) -> None:
    resolved = resolve_edit_config(tiny, EditConfig(), 10)
    assert (resolved.micro_batch_size, resolved.micro_batch_tokens) == (32, 1024)
    mine = resolve_edit_config(tiny, EditConfig(micro_batch_size=5, micro_batch_tokens=77), 10)
    assert (mine.micro_batch_size, mine.micro_batch_tokens) == (5, 77)
    half = resolve_edit_config(tiny, EditConfig(micro_batch_size=5), 10)
    assert (half.micro_batch_size, half.micro_batch_tokens) == (5, 1024)


def test_cuda_index_loads_on_that_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    if torch.cuda.device_count() < 1:
        pytest.skip("needs a CUDA device")
    loaded = load_base(ModelConfig(path=str(tiny_model_dir), device="cuda:0"), tmp_path)
    assert loaded.device == torch.device("cuda", 0)
    assert {p.device for p in loaded.model.parameters()} == {torch.device("cuda", 0)}


def _fake_hf_cache(root: Path, repo_id: str, model_dir: Path) -> Path:
    """The layout huggingface_hub writes: hub/models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_model_path_may_be_a_model_id_in_the_local_hf_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    # a child process: huggingface_hub reads HF_HOME once, at import
    snapshot = _fake_hf_cache(tmp_path / "hf", "locft-test/tiny-llama", tiny_model_dir)
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from locft.config import ModelConfig\n"
        "from locft.engine.model_io import load_base, local_model_path\n"
        "from locft.errors import ModelLoadError\n"
        "loaded = load_base(ModelConfig(path='locft-test/tiny-llama', device='cpu'), Path(sys.argv[1]))\n"
        "try:\n"
        "    local_model_path('locft-test/not-there')\n"
        "    missing = None\n"
        "except ModelLoadError as exc:\n"
        "    missing = str(exc)\n"
        "print(json.dumps({'dir': str(local_model_path('locft-test/tiny-llama')), 'source': loaded.source,\n"
        "                  'layers': loaded.config.num_hidden_layers, 'missing': missing}))\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "home")], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(record["dir"]) == snapshot
    assert record["source"] == "locft-test/tiny-llama" and record["layers"] == 4
    assert "local Hugging Face cache" in record["missing"] and "never downloads" in record["missing"]


def test_a_missing_relative_path_is_not_mistaken_for_a_cache_id(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        local_model_path(str(tmp_path / "no-such-dir"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        local_model_path("./no-such-dir")
