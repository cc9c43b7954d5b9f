from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from locft.config import EditConfig, ModelConfig
from locft.engine.model_io import LoadedModel, load_base
from locft.engine.snapshot import (
    apply_snapshot,
    export_checkpoint,
    load_snapshot,
    save_snapshot,
    verify_snapshot,
)
from locft.engine.train import edit
from locft.errors import SnapshotError
from locft.facts import EditFact

FACTS = [EditFact("The capital of Wakanda is", "Birnin Zana"), EditFact("Frodo's sword is called", "Sting")]


@pytest.fixture()
def trained(tiny: LoadedModel) -> dict[str, torch.Tensor]:
    return edit(tiny, FACTS, EditConfig(lr=1e-2, batch_size=2, max_epochs=3)).tensors


def test_round_trip_is_bit_exact(tmp_path: Path, tiny: LoadedModel, trained: dict[str, torch.Tensor]) -> None:
    info = save_snapshot(tmp_path, "v1", trained, tiny.fingerprint, {"fact_set_digest": "abc"})
    snap = load_snapshot(info.path, expected_sha256=info.sha256)
    assert set(snap.tensors) == set(trained)
    for name, t in trained.items():
        assert torch.equal(snap.tensors[name], t)
        assert snap.tensors[name].dtype == t.dtype
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert manifest["base_fingerprint"] == tiny.fingerprint
    assert manifest["fact_set_digest"] == "abc"
    assert info.size == (info.path / "tensors.safetensors").stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_refuses_to_overwrite(tmp_path: Path, tiny: LoadedModel, trained: dict[str, torch.Tensor]) -> None:
    save_snapshot(tmp_path, "v1", trained, tiny.fingerprint)
    with pytest.raises(SnapshotError):
        save_snapshot(tmp_path, "v1", trained, tiny.fingerprint)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corruption_is_detected(tmp_path: Path, tiny: LoadedModel, trained: dict[str, torch.Tensor],
                                damage: str) -> None:
    info = save_snapshot(tmp_path, "v1", trained, tiny.fingerprint)
    f = info.path / "tensors.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(bytes(data[:-10]))
    else:
        f.unlink()
    with pytest.raises(SnapshotError):
        verify_snapshot(info.path, info.sha256)


def test_wrong_base_is_refused(tmp_path: Path, tiny: LoadedModel, trained: dict[str, torch.Tensor]) -> None:
    info = save_snapshot(tmp_path, "v1", trained, "0" * 64)
    with pytest.raises(SnapshotError, match="base model"):
        apply_snapshot(tiny, load_snapshot(info.path))


def test_export_loads_with_transformers_and_matches(
    tmp_path: Path, tiny_model_dir: Path, tiny: LoadedModel, trained: dict[str, torch.Tensor]
) -> None:
    info = save_snapshot(tmp_path / "snaps", "v1", trained, tiny.fingerprint)
    home = tmp_path / "home"
    out = export_checkpoint(home, ModelConfig(path=str(tiny_model_dir)), info.path, tmp_path / "export")
    exported = AutoModelForCausalLM.from_pretrained(str(out))
    params = dict(exported.named_parameters())
    for name, t in trained.items():
        assert torch.equal(params[name].detach(), t)
    base = load_base(ModelConfig(path=str(tiny_model_dir)), home)
    apply_snapshot(base, load_snapshot(info.path))
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(exported(ids).logits, base.model(ids).logits)
