"""Checks that a study's storage and tracking store can be written, before anything is.

A study that fails on its storage after its MLflow run was created leaves that run behind
(and a half-made study); so the folders are probed first, with a throwaway folder removed at
once, and the sqlite store's folder is made only once every check has passed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from trainable.errors import UserError, first_line

SQLITE = "sqlite:///"


def folder_problem(path: Path) -> str | None:
    """Why `path` cannot be used as a folder to write in (made if missing), or None if it can.

    Writes nothing that stays: the nearest existing folder gets an empty probe folder, removed
    at once.
    """
    path = path.expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        probe = tempfile.mkdtemp(prefix=".write-check-", dir=existing)
    except OSError as e:
        return f"cannot create a folder in {existing} ({e.strerror or e})"
    os.rmdir(probe)
    return None


def check_storage(storage_uri: str) -> None:
    """Fail (one line) when the study's results cannot be written under `storage_uri`."""
    if "://" in storage_uri:
        import pyarrow.fs as pafs

        try:
            pafs.FileSystem.from_uri(storage_uri)
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for unusable URIs
            raise UserError(f"storage_path {storage_uri}: {first_line(e)}") from None
        return
    problem = folder_problem(Path(storage_uri))
    if problem:
        raise UserError(f"storage_path {storage_uri}: {problem}")


def sqlite_folder(tracking_uri: str) -> Path | None:
    """The folder of a sqlite tracking store (None for other stores)."""
    if not tracking_uri.startswith(SQLITE):
        return None
    return Path(tracking_uri[len(SQLITE):]).parent


def make_store_folder(tracking_uri: str) -> None:
    """Create the sqlite store's folder (MLflow creates the file, not its folder)."""
    folder = sqlite_folder(tracking_uri)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
