"""Fault injection for the reliability tests: imported as `sitecustomize` only by processes
started with this directory on PYTHONPATH and LOCFT_FAULT set (never by a normal locft run).

The test starts a daemon with these in its environment; the daemon's round worker inherits them.
When that worker (`python -m locft.daemon.worker`) reaches the named point it writes
$LOCFT_FAULT_DIR/reached ({"point", "pid"}) and stays there, so that the test can SIGKILL the
daemon and the worker exactly there: a crash at that instant. Points, in round order:

  train:K              training, at epoch K
  snapshot.tensors     the tensors file written in the .tmp- directory, no manifest yet
  snapshot.renamed     the snapshot directory renamed into place, no Version row yet
  record.uncommitted   inside the transaction that writes the Version row (rolled back by the crash)
  record.committed     the Version row written, not gated
  gate                 measuring the gates (evaluate_edits entered)
  judge.committed      the gate result written, not promoted
  promote.uncommitted  inside the transaction that moves the promoted pointer
  promote.committed    promoted, the round not finished
  retention            a snapshot directory renamed to .tmp-deleted-*, not yet removed
  finish               about to record the round's outcome

  fsize:BYTES          no stop: the snapshot is written under RLIMIT_FSIZE = BYTES (SIGXFSZ
                       ignored), i.e. the disk fills up during the write (write() fails with EFBIG)
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FAULT = os.environ.get("LOCFT_FAULT", "")


def _in_worker() -> bool:
    return bool(sys.argv) and sys.argv[0].replace("\\", "/").endswith("locft/daemon/worker.py")


def park(point: str) -> None:
    """Tell the test where we are, then stay here until killed."""
    if not _in_worker():
        return
    out = Path(os.environ["LOCFT_FAULT_DIR"])
    tmp = out / f"reached.{os.getpid()}"
    tmp.write_text(json.dumps({"point": point, "pid": os.getpid()}))
    os.replace(tmp, out / "reached")
    while True:
        time.sleep(0.05)


def _after(fn: Callable[..., Any], point: str, when: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if when(*args, **kwargs):
            park(point)
        return result
    return wrapper


def _before(fn: Callable[..., Any], point: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        park(point)
        return fn(*args, **kwargs)
    return wrapper


def _patch_train(module: Any) -> None:
    epoch = int(FAULT.split(":")[1])
    edit = module.edit

    def patched(*args: Any, progress: Any = None, **kwargs: Any) -> Any:
        def on_progress(p: Any) -> None:
            if getattr(p, "phase", None) == "train" and getattr(p, "epoch", 0) >= epoch:
                park(f"train:{epoch}")
            if progress is not None:
                progress(p)
        return edit(*args, progress=on_progress, **kwargs)

    module.edit = patched


def _patch_safetensors(module: Any) -> None:
    module.save_file = _after(module.save_file, "snapshot.tensors",
                              lambda tensors, filename, *a, **k: "/.tmp-round-" in str(filename))


def _patch_atomic(module: Any) -> None:
    fsync_dir = module.fsync_dir

    def patched(path: Path) -> None:
        if Path(path).name == "snapshots":  # the parent, after the snapshot directory's rename
            park("snapshot.renamed")
        fsync_dir(path)

    module.fsync_dir = patched


def _patch_snapshot(module: Any) -> None:
    if FAULT.startswith("fsize:"):
        import resource
        import signal

        limit = int(FAULT.split(":")[1])
        save = module.save_snapshot

        def limited(*args: Any, **kwargs: Any) -> Any:
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then write() fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
            try:
                return save(*args, **kwargs)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

        module.save_snapshot = limited


def _patch_versions(module: Any) -> None:
    """locft.store.versions (record, judge) or locft.store.promotion (promote)."""
    mixin = module.PromotionMixin if FAULT.startswith("promote.") else module.VersionsMixin
    if FAULT in ("record.uncommitted", "promote.uncommitted"):
        kind = module.ev.VERSION_RECORDED if FAULT == "record.uncommitted" else module.ev.VERSION_PROMOTED
        append_event = module.append_event

        def patched(session: Any, event_kind: str, *args: Any, **kwargs: Any) -> Any:
            result = append_event(session, event_kind, *args, **kwargs)
            if event_kind == kind:
                session.flush()  # the rows are in the transaction, not committed
                park(FAULT)
            return result

        module.append_event = patched
    elif FAULT == "record.committed":
        mixin.record_version = _after(mixin.record_version, FAULT)
    elif FAULT == "judge.committed":
        mixin.record_gate_result = _after(mixin.record_gate_result, FAULT)
    elif FAULT == "promote.committed":
        mixin.promote = _after(mixin.promote, FAULT)


def _patch_editing(module: Any) -> None:
    module.evaluate_edits = _before(module.evaluate_edits, "gate")


def _patch_store_snapshots(module: Any) -> None:
    remove_dir = module._remove_dir

    def remove_then_park(path: Path) -> bool:
        if not _in_worker():  # the daemon's own sweeps of orphans: as they are
            return bool(remove_dir(path))
        trash = path.with_name(f"{module.TMP_PREFIX}deleted-{path.name}-{os.getpid()}")
        os.rename(path, trash)
        park("retention")
        return True

    module._remove_dir = remove_then_park


def _patch_rounds(module: Any) -> None:
    module.RoundsMixin.finish_round = _before(module.RoundsMixin.finish_round, "finish")


PATCHES: dict[str, Callable[[Any], None]] = {}
if FAULT.startswith("train:"):
    PATCHES["locft.engine.train"] = _patch_train
elif FAULT == "snapshot.tensors":
    PATCHES["safetensors.torch"] = _patch_safetensors
elif FAULT == "snapshot.renamed":
    PATCHES["locft.atomic"] = _patch_atomic
elif FAULT.startswith("fsize:"):
    PATCHES["locft.engine.snapshot"] = _patch_snapshot
elif FAULT in ("record.uncommitted", "record.committed", "judge.committed"):
    PATCHES["locft.store.versions"] = _patch_versions
elif FAULT in ("promote.uncommitted", "promote.committed"):
    PATCHES["locft.store.promotion"] = _patch_versions
elif FAULT == "gate":
    PATCHES["locft.evaluation.editing"] = _patch_editing
elif FAULT == "retention":
    PATCHES["locft.store.snapshots"] = _patch_store_snapshots
elif FAULT == "finish":
    PATCHES["locft.store.rounds"] = _patch_rounds
elif FAULT:
    raise SystemExit(f"sitecustomize: unknown LOCFT_FAULT {FAULT!r}")


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Lets the real finder find the module, then patches it right after it is executed."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        patch = PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if PATCHES:
    sys.meta_path.insert(0, _PatchOnImport())
