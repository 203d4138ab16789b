"""Atomic file output: a reader sees the old file (or folder) or the new one, never a
partial one. Every writer of the package goes through these."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def umask() -> int:
    """The process's umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """``write(tmp_path)`` into a temporary file in ``path``'s folder, then rename it over
    ``path`` (the folder is created if needed). The temporary name keeps ``path``'s
    suffixes (Keras needs ``.weights.h5``); the file gets the usual permissions (mkstemp
    makes 0600). On any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~umask())
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write`` of a text file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """``atomic_write`` of ``obj`` as JSON, indented by 2 (no trailing newline)."""
    return atomic_write_text(path, json.dumps(obj, indent=2))


def atomic_dir(path: str | os.PathLike, write: Callable[[Path], object],
               overwrite: bool = True) -> Path:
    """Fill a temporary sibling folder of ``path`` with ``write(tmp)``, then rename it to
    ``path`` (the parent folder is created if needed). An existing ``path`` is replaced
    (moved aside, then deleted once the new one is in place), or, with
    ``overwrite=False``, refused with ``FileExistsError`` before ``write`` runs. The folder
    gets the usual permissions (mkdtemp makes 0700). On any error the temporary folder is
    removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass --overwrite to replace it)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; a run is for sharing
    try:
        write(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
