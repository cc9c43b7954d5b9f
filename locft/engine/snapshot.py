"""Self-describing snapshots: only the tuned tensors (safetensors) plus manifest.json.

A snapshot verifies, applies and exports without the database: the manifest records the
base fingerprint, each tensor's name, shape, dtype and sha256, the file's sha256, the edit
config and the fact-set digest. Written atomically (temp dir + fsync + rename).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from locft import __version__
from locft.atomic import atomic_directory
from locft.config import ModelConfig
from locft.engine.model_io import LoadedModel, load_base
from locft.engine.weights import swap_in
from locft.errors import SnapshotError

if TYPE_CHECKING:
    from locft.engine.scope import Scope

FORMAT = "locft-snapshot/1"
TENSORS_FILE = "tensors.safetensors"
MANIFEST_FILE = "manifest.json"
SCOPE_FILE = "scope.json"  # which prompts the version is about (engine.scope); absent: every prompt
SCOPE_TENSORS_FILE = "scope.safetensors"  # the scope's fact embeddings, when it uses similarity


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
    scope: Scope | None = None  # None: a snapshot written before scopes, or built without one

    @property
    def base_fingerprint(self) -> str:
        return str(self.manifest["base_fingerprint"])


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_sha256(t: torch.Tensor) -> str:
    return _sha256_bytes(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())


def save_snapshot(
    parent_dir: Path,
    name: str,
    tensors: Mapping[str, torch.Tensor],
    base_fingerprint: str,
    extra: Mapping[str, Any] | None = None,
    scope: Scope | None = None,
) -> SnapshotInfo:
    """Write `parent_dir/name/` atomically; refuses to overwrite an existing snapshot. The scope,
    when given, is stored beside the tensors and checksummed in the manifest like them."""
    from safetensors.torch import save_file

    parent_dir.mkdir(parents=True, exist_ok=True)
    final = parent_dir / name
    if final.exists():
        raise SnapshotError(f"snapshot {final} already exists")
    with atomic_directory(final) as tmp:  # fsyncs every file written in it
        cpu = {n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}
        tensors_path = tmp / TENSORS_FILE
        save_file(cpu, str(tensors_path), metadata={"format": FORMAT})
        file_sha = hashlib.sha256(tensors_path.read_bytes()).hexdigest()
        scope_entry = _write_scope(tmp, scope) if scope is not None else None
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
        if scope_entry is not None:
            manifest["scope"] = scope_entry
        manifest_path = tmp / MANIFEST_FILE
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return SnapshotInfo(final, manifest["tensors_sha256"], manifest["tensors_size"])


def _write_scope(directory: Path, scope: Scope) -> dict[str, Any]:
    from safetensors.torch import save_file

    from locft.engine.scope import scope_file_payload

    text, tensors = scope_file_payload(scope)
    (directory / SCOPE_FILE).write_bytes(text)
    entry: dict[str, Any] = {"file": SCOPE_FILE, "sha256": _sha256_bytes(text), "summary": scope.summary()}
    if tensors:
        save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()},
                  str(directory / SCOPE_TENSORS_FILE), metadata={"format": FORMAT})
        entry |= {"tensors_file": SCOPE_TENSORS_FILE,
                  "tensors_sha256": hashlib.sha256((directory / SCOPE_TENSORS_FILE).read_bytes()).hexdigest()}
    return entry


def _verify_scope_files(path: Path, manifest: Mapping[str, Any]) -> None:
    entry = manifest.get("scope")
    if entry is None:
        return
    if not isinstance(entry, dict):
        raise SnapshotError(f"snapshot {path}: the manifest's scope entry is malformed")
    for file_key, sha_key in (("file", "sha256"), ("tensors_file", "tensors_sha256")):
        if file_key not in entry:
            continue
        file = path / str(entry[file_key])
        if not file.is_file():
            raise SnapshotError(f"snapshot {path}: {file.name} (its scope) is missing; roll back to a healthy "
                                "version (`locft rollback`)")
        actual = hashlib.sha256(file.read_bytes()).hexdigest()
        if actual != entry.get(sha_key):
            raise SnapshotError(f"snapshot {path}: {file.name} (its scope) is corrupted: sha256 {actual[:12]}... "
                                f"does not match the manifest; roll back to a healthy version (`locft rollback`)")


def _load_scope(path: Path, manifest: Mapping[str, Any]) -> Scope | None:
    from safetensors.torch import load_file

    from locft.engine.scope import Scope

    entry = manifest.get("scope")
    if not isinstance(entry, dict):
        return None
    try:
        data = json.loads((path / str(entry["file"])).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"snapshot {path}: its scope is unreadable ({exc})") from None
    embeddings = None
    if "tensors_file" in entry:
        embeddings = load_file(str(path / str(entry["tensors_file"]))).get("embeddings")
    return Scope.from_json(data, embeddings)


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
    _verify_scope_files(path, manifest)
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
    return Snapshot(Path(path), manifest, tensors, _load_scope(Path(path), manifest))


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
    """A full Hugging Face checkpoint of base + snapshot (snapshot_dir None: the base model).
    One set of weights cannot carry a scope: the checkpoint answers every prompt with the edit."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SnapshotError(f"{out_dir} exists and is not empty; choose a new directory")
    snapshot = load_snapshot(snapshot_dir) if snapshot_dir is not None else None
    loaded = load_base(model_cfg, home)
    if snapshot is not None:
        apply_snapshot(loaded, snapshot)
    with atomic_directory(out_dir) as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        meta = {
            "exported_by": f"locft {__version__}",
            "base_fingerprint": loaded.fingerprint,
            "base": loaded.source,
            "snapshot": snapshot.manifest if snapshot else None,
        }
        (tmp / "locft_export.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out_dir
