"""Self-describing snapshots: only the tuned tensors (safetensors) plus manifest.json.

A snapshot verifies, applies and exports without the database: the manifest records the
base fingerprint, each tensor's name, shape, dtype and sha256, the file's sha256, the edit
config and the fact-set digest. Written atomically (temp dir + fsync + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from locft import __version__
from locft.config import ModelConfig
from locft.engine.model_io import LoadedModel, fsync_dir, load_base
from locft.engine.weights import swap_in
from locft.errors import SnapshotError

FORMAT = "locft-snapshot/1"
TENSORS_FILE = "tensors.safetensors"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class SnapshotInfo:
    path: Path
    sha256: str  # of the tensors file
    size: int  # bytes of the tensors file


@dataclass
class Snapshot:
    path: Path
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def base_fingerprint(self) -> str:
        return str(self.manifest["base_fingerprint"])


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_sha256(t: torch.Tensor) -> str:
    return _sha256_bytes(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def save_snapshot(
    parent_dir: Path,
    name: str,
    tensors: Mapping[str, torch.Tensor],
    base_fingerprint: str,
    extra: Mapping[str, Any] | None = None,
) -> SnapshotInfo:
    """Write `parent_dir/name/` atomically; refuses to overwrite an existing snapshot."""
    from safetensors.torch import save_file

    parent_dir.mkdir(parents=True, exist_ok=True)
    final = parent_dir / name
    if final.exists():
        raise SnapshotError(f"snapshot {final} already exists")
    tmp = Path(tempfile.mkdtemp(dir=parent_dir, prefix=f".tmp-{name}-"))
    try:
        cpu = {n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}
        tensors_path = tmp / TENSORS_FILE
        save_file(cpu, str(tensors_path), metadata={"format": FORMAT})
        _fsync_file(tensors_path)
        file_sha = hashlib.sha256(tensors_path.read_bytes()).hexdigest()
        manifest = {
            "format": FORMAT,
            "locft_version": __version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_fingerprint": base_fingerprint,
            "tensors_file": TENSORS_FILE,
            "tensors_sha256": file_sha,
            "tensors_size": tensors_path.stat().st_size,
            "parameters": {
                n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "sha256": tensor_sha256(t)}
                for n, t in cpu.items()
            },
            **dict(extra or {}),
        }
        manifest_path = tmp / MANIFEST_FILE
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        _fsync_file(manifest_path)
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(parent_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SnapshotInfo(final, manifest["tensors_sha256"], manifest["tensors_size"])


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = Path(path) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise SnapshotError(f"snapshot {path}: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"snapshot {path}: {MANIFEST_FILE} is corrupted ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"snapshot {path}: not a {FORMAT} manifest")
    return manifest


def verify_snapshot(path: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Check the tensors file against the manifest (and the store's record); return the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise SnapshotError(f"snapshot {path} is missing; roll back to a healthy version (`locft rollback`)")
    manifest = read_manifest(path)
    tensors_path = path / manifest.get("tensors_file", TENSORS_FILE)
    if not tensors_path.is_file():
        raise SnapshotError(f"snapshot {path}: {tensors_path.name} is missing")
    actual = hashlib.sha256(tensors_path.read_bytes()).hexdigest()
    for label, expected in (("manifest", manifest["tensors_sha256"]), ("store", expected_sha256)):
        if expected is not None and actual != expected:
            raise SnapshotError(
                f"snapshot {path} is corrupted: sha256 {actual[:12]}... does not match the {label}'s "
                f"{expected[:12]}...; roll back to a healthy version (`locft rollback`)"
            )
    return manifest


def load_snapshot(path: Path, expected_sha256: str | None = None) -> Snapshot:
    """Verify, then load the tensors (and check each against its manifest entry)."""
    from safetensors.torch import load_file

    manifest = verify_snapshot(path, expected_sha256)
    tensors = load_file(str(Path(path) / manifest.get("tensors_file", TENSORS_FILE)))
    declared = manifest["parameters"]
    if set(tensors) != set(declared):
        raise SnapshotError(f"snapshot {path}: tensors {sorted(tensors)} do not match the manifest")
    for n, t in tensors.items():
        if list(t.shape) != declared[n]["shape"]:
            raise SnapshotError(f"snapshot {path}: {n} has shape {list(t.shape)}, manifest says {declared[n]['shape']}")
    return Snapshot(Path(path), manifest, tensors)


def check_base(snapshot: Snapshot, loaded: LoadedModel) -> None:
    if snapshot.base_fingerprint != loaded.fingerprint:
        raise SnapshotError(
            f"snapshot {snapshot.path} was built on base model {snapshot.base_fingerprint[:12]}..., but the "
            f"configured base model ({loaded.source}) is {loaded.fingerprint[:12]}...; it cannot be served on "
            "this base: restore the original model files or rebuild with a new round"
        )


def apply_snapshot(loaded: LoadedModel, snapshot: Snapshot) -> dict[str, torch.Tensor]:
    """Point the model at the snapshot's tensors; returns what they replaced (to swap back)."""
    check_base(snapshot, loaded)
    return swap_in(loaded.model, snapshot.tensors)


def export_checkpoint(home: Path, model_cfg: ModelConfig, snapshot_dir: Path | None, out_dir: Path) -> Path:
    """A full Hugging Face checkpoint of base + snapshot (snapshot_dir None: the base model)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SnapshotError(f"{out_dir} exists and is not empty; choose a new directory")
    snapshot = load_snapshot(snapshot_dir) if snapshot_dir is not None else None
    loaded = load_base(model_cfg, home)
    if snapshot is not None:
        apply_snapshot(loaded, snapshot)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".tmp-{out_dir.name}-"))
    try:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        meta = {
            "exported_by": f"locft {__version__}",
            "base_fingerprint": loaded.fingerprint,
            "base": loaded.source,
            "snapshot": snapshot.manifest if snapshot else None,
        }
        (tmp / "locft_export.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        for f in tmp.iterdir():
            _fsync_file(f)
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
