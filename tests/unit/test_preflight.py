"""Storage and tracking-store checks made before a study writes anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainable.errors import UserError
from tune.preflight import check_storage, folder_problem, make_store_folder

pytestmark = pytest.mark.unit

def test_a_missing_folder_that_can_be_made_is_fine_and_nothing_is_left(tmp_path):
    assert folder_problem(tmp_path / "a" / "b") is None
    assert list(tmp_path.iterdir()) == []  # the probe folder is gone


def test_a_folder_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    assert folder_problem(tmp_path / "f" / "runs") == f"{tmp_path / 'f'} is not a folder"
    with pytest.raises(UserError, match=r"storage_path .*/f/runs: .* is not a folder"):
        check_storage(str(tmp_path / "f" / "runs"))


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="no /proc on this machine")
def test_a_folder_that_cannot_be_made_is_refused():
    assert folder_problem(Path("/proc/nope")).startswith("cannot create a folder in /proc (")


def test_the_sqlite_store_folder_is_made(tmp_path):
    make_store_folder(f"sqlite:///{tmp_path}/x/y/mlflow.db")
    assert (tmp_path / "x" / "y").is_dir() and not (tmp_path / "x" / "y" / "mlflow.db").exists()
    make_store_folder("http://127.0.0.1:5000")  # not a local store: nothing to make
