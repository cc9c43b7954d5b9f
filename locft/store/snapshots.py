"""Snapshot directories on disk: checking one against its Version row, sweeping orphans,
applying the retention policy.

The engine writes `snapshots/<name>/` atomically (a `.tmp-*` directory, then a rename) BEFORE
its Version row; so a directory without a row is either a crash leftover or a row about to
be written. The minimum age tells the two apart. Deleting files never deletes rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import col, select

from locft.atomic import DIR_TMP_PREFIX
from locft.errors import SnapshotError
from locft.home import Home
from locft.policies.retention import RetentionCandidate, RetentionPlan, plan_retention
from locft.store import events as ev
from locft.store.db import StoreBase
from locft.store.events import append_event
from locft.store.models import PromotedPointer, Promotion, Version

log = logging.getLogger(__name__)

TENSORS_FILE = "tensors.safetensors"  # as written by locft.engine.snapshot (not imported: no torch here)
TMP_PREFIX = DIR_TMP_PREFIX  # what locft.atomic.atomic_directory writes in
DEFAULT_ORPHAN_MIN_AGE_S = 3600.0


@dataclass(frozen=True)
class RetentionResult:
    plan: RetentionPlan
    deleted: tuple[Path, ...]  # directories actually removed (none on a dry run)


def snapshot_digest(snapshot_dir: Path) -> tuple[str, int]:
    """sha256 and size of a snapshot's tensors file (what the Version row records)."""
    path = Path(snapshot_dir) / TENSORS_FILE
    h = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                size += len(block)
    except FileNotFoundError:
        raise SnapshotError(f"snapshot {snapshot_dir}: {TENSORS_FILE} is missing") from None
    return h.hexdigest(), size


def snapshot_present(home: Home, row: Version) -> bool:
    """Whether a version's tensors file is on disk (version 0, the base model, has none: True)."""
    return row.snapshot_path is None or (home.absolute(row.snapshot_path) / TENSORS_FILE).is_file()


def require_snapshot(home: Home, row: Version) -> None:
    """The pointer only moves onto a snapshot that is there and intact (its sha256 as recorded):
    a corrupted one would be refused by every server anyway, after the move."""
    if not snapshot_present(home, row):
        raise SnapshotError(f"the snapshot of version {row.id} ({row.snapshot_path}) is gone "
                            "(deleted by retention or by hand); it cannot be served")
    if row.snapshot_path is not None and row.snapshot_sha256 is not None:
        sha, size = snapshot_digest(home.absolute(row.snapshot_path))
        if sha != row.snapshot_sha256 or (row.snapshot_size is not None and size != row.snapshot_size):
            raise SnapshotError(
                f"the snapshot of version {row.id} ({row.snapshot_path}) is corrupted: sha256 {sha[:12]}... "
                f"({size} bytes), recorded {row.snapshot_sha256[:12]}... ({row.snapshot_size} bytes); it "
                "cannot be served (a new round rebuilds the facts from the base model)")


def _remove_dir(path: Path) -> bool:
    """Rename out of the way first (one atomic step), then delete; a crash leaves a .tmp- dir."""
    trash = path.with_name(f"{TMP_PREFIX}deleted-{path.name}-{os.getpid()}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return False  # someone else removed it
    shutil.rmtree(trash, ignore_errors=True)
    return True


class SnapshotsMixin(StoreBase):
    def sweep_orphan_snapshots(self, min_age_seconds: float = DEFAULT_ORPHAN_MIN_AGE_S) -> list[Path]:
        """Delete snapshot directories with no Version row, and `.tmp-*` leftovers, older than
        `min_age_seconds` (younger ones may be a snapshot whose row is being written)."""
        root = self.home.snapshots_dir
        try:
            entries = list(root.iterdir())
        except FileNotFoundError:
            return []
        if not entries:
            return []
        with self._read() as session:
            known = {p for p in session.exec(select(Version.snapshot_path)) if p}
        now = time.time()
        removed: list[Path] = []
        for entry in entries:
            if not entry.is_dir() or entry.is_symlink():
                continue
            try:
                age = now - entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < min_age_seconds:
                continue
            if entry.name.startswith(TMP_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            elif self.home.relative(entry) not in known and _remove_dir(entry):
                removed.append(entry)
        for path in removed:
            log.info("removed orphan snapshot directory %s", path)
        return removed

    def apply_retention(self, *, dry_run: bool = False, actor: str | None = None) -> RetentionResult:
        """Delete the snapshot directories the retention policy lets go (rows stay)."""
        versions = self.list_versions()  # type: ignore[attr-defined]  # VersionsMixin's, beside this in Store
        with self._read() as session:
            history = list(session.exec(select(Promotion.version_id).order_by(col(Promotion.id))))
        plan = plan_retention(
            [RetentionCandidate(v.id, v.state, v.snapshot_path is not None and v.snapshot_present) for v in versions],
            history,
            self.config,
        )
        if dry_run or not plan.delete:
            return RetentionResult(plan, ())
        by_id = {v.id: v for v in versions}
        deleted: list[Path] = []
        for version_id in plan.delete:
            stored = by_id[version_id].snapshot_path
            assert stored is not None
            path = self.home.absolute(stored)
            # under the write lock, so that no promote/rollback can move onto it meanwhile
            with self._write() as session:
                pointer = session.get(PromotedPointer, 1)
                if pointer is not None and pointer.version_id == version_id:
                    continue
                if not _remove_dir(path):
                    continue
                append_event(session, ev.SNAPSHOT_DELETED, actor=actor, version_id=version_id,
                             payload={"path": stored, "why": "retention"})
            deleted.append(path)
            log.info("retention: deleted the snapshot of version %s (%s)", version_id, path)
        return RetentionResult(plan, tuple(deleted))
