"""Atomic writes: all or nothing, with the usual permissions."""

import os
import stat

import pytest

from mbdefense.core.io import atomic_directory, atomic_write_json, atomic_write_text


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_and_folders_get_the_usual_permissions(tmp_path, umask_022):
    path = atomic_write_json(tmp_path / "sub" / "results.json", {"rows": []})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("w")
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755


def test_a_failed_write_leaves_the_old_file_and_no_temporaries(tmp_path):
    path = atomic_write_text(tmp_path / "report.md", "old")
    with pytest.raises(TypeError):
        atomic_write_text(path, 123)  # fails inside the write
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "model"):
            raise RuntimeError("stop")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
