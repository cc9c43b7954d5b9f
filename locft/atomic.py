"""Atomic file and directory writes: readers see the old content or the new, never half of it.

A file is written to a temp file beside it (`.<name>.<random>.tmp`, see `temp_glob`) and
renamed over it; a directory is built as `.tmp-<name>-<random>` beside its target and renamed
into place. `durable` (the default) also fsyncs the data and the parent directory, so the new
content survives a power loss; run-time files that mean nothing after a reboot (progress,
pid announcements) and caches pass durable=False.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DIR_TMP_PREFIX = ".tmp-"  # store.snapshots sweeps leftovers of this prefix
FILE_TMP_SUFFIX = ".tmp"


def temp_glob(path: Path) -> str:
    """The glob of the temp files a write to `path` leaves behind when it is killed midway."""
    return f".{Path(path).name}.*{FILE_TMP_SUFFIX}"


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to a temp file in the same directory, rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=FILE_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, *, durable: bool = True) -> None:
    """`atomic_write_bytes` of `text` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a new temp directory beside `target` to fill. On a clean exit: fsync the files in
    it and the directory itself, rename it to `target` (which must not exist, or be an empty
    directory: a non-empty one raises OSError), fsync the parent. On an error: remove it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{DIR_TMP_PREFIX}{target.name}-"))
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                fsync_file(f)
        fsync_dir(tmp)
        if target.is_dir():
            target.rmdir()
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
