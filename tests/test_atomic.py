from __future__ import annotations

from pathlib import Path

import pytest

from locft import atomic
from locft.atomic import atomic_directory, atomic_write_bytes, atomic_write_text, temp_glob


@pytest.mark.parametrize("durable", [True, False])
def test_a_write_replaces_the_file_and_leaves_no_temp_file(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "sub" / "state.json"
    atomic_write_text(path, "old", durable=durable)
    atomic_write_text(path, "new ü", durable=durable)
    assert path.read_text(encoding="utf-8") == "new ü"
    atomic_write_bytes(path, b"\x00\x01", durable=durable)
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_durable_writes_fsync_the_file_and_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    real = atomic.fsync_dir
    monkeypatch.setattr(atomic, "fsync_dir", lambda p: (synced.append(Path(p)), real(p)))
    atomic_write_text(tmp_path / "a", "x")
    atomic_write_text(tmp_path / "b", "x", durable=False)
    assert synced == [tmp_path]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")

    def broken(src: str, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_temp_glob_matches_the_temp_files_a_killed_write_leaves(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "daemon.json"
    monkeypatch.setattr(atomic.os, "replace", lambda src, dst: None)  # killed before the rename
    atomic_write_text(path, "{}")
    [left] = tmp_path.iterdir()
    assert list(tmp_path.glob(temp_glob(path))) == [left] and not path.exists()


def test_a_directory_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "snap"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    target.mkdir()  # an empty directory is replaced
    with atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(atomic.DIR_TMP_PREFIX)
        (tmp / "a").write_text("1")
    assert [p.name for p in tmp_path.iterdir()] == ["snap"] and (target / "a").read_text() == "1"
    with pytest.raises(OSError):  # a full one is never overwritten
        with atomic_directory(target) as tmp:
            (tmp / "b").write_text("2")
    assert [p.name for p in target.iterdir()] == ["a"] and [p.name for p in tmp_path.iterdir()] == ["snap"]
