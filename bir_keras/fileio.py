"""Atomic file output: a reader sees the old file (or folder) or the new one, never a
partial one. Every writer of the package goes through these."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
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


def atomic_write(path: str | os.PathLike, write: Callable[[str], object],
                 check: Callable[[Path], object] | None = None) -> Path:
    """``write(tmp_path)`` into a temporary file in ``path``'s folder, then rename it over
    ``path`` (the folder is created if needed). The temporary name keeps ``path``'s
    suffixes (Keras needs ``.weights.h5``); the file gets the usual permissions (mkstemp
    makes 0600). ``check(path)``, if given, runs at the moment of replacing (it raises to
    leave what is there alone); a ``path`` that was free then is only taken if it still is
    (``rename_noreplace``), so a file that appeared meanwhile is never replaced. On any error the temporary file is removed and ``path`` is
    untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~umask())
        write(tmp)
        existed = os.path.lexists(path)
        if check is not None:
            check(path)
        if existed:
            os.replace(tmp, path)
        else:
            rename_noreplace(tmp, path)
    except TargetAppeared:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise FileExistsError(f"{path} appeared while it was being written; it was left "
                              "alone and nothing was replaced") from None
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


class TargetAppeared(FileExistsError):
    """A path that was absent (or checked) was found taken at the moment of renaming."""


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` to ``dst``, refusing (``FileExistsError``) if ``dst`` exists, in one
    step where the system has it (Linux ``renameat2(RENAME_NOREPLACE)``), so that nothing
    that appeared at ``dst`` is ever replaced; elsewhere a check just before the rename."""
    src, dst = os.fsencode(src), os.fsencode(dst)
    fn = getattr(_libc(), "renameat2", None)
    if fn is not None:
        at_fdcwd, noreplace = -100, 1
        if fn(at_fdcwd, src, at_fdcwd, dst, noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):  # else: not supported here, fall back
            if err == errno.EEXIST or err == errno.ENOTEMPTY:
                raise TargetAppeared(err, f"{os.fsdecode(dst)} appeared meanwhile",
                                      os.fsdecode(dst))
            raise OSError(err, os.strerror(err), os.fsdecode(dst))
    if os.path.lexists(dst):
        raise TargetAppeared(errno.EEXIST, f"{os.fsdecode(dst)} appeared meanwhile",
                              os.fsdecode(dst))
    os.rename(src, dst)


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def atomic_dir(path: str | os.PathLike, write: Callable[[Path], object],
               overwrite: bool = True, check: Callable[[Path], object] | None = None) -> Path:
    """Fill a temporary sibling folder of ``path`` with ``write(tmp)``, then rename it to
    ``path`` (the parent folder is created if needed). An existing ``path`` is replaced
    (moved aside, then deleted once the new one is in place), or, with
    ``overwrite=False``, refused with ``FileExistsError`` before ``write`` runs.

    ``check(path)``, if given, runs again at the moment of replacing (after ``write``): it
    raises to leave whatever is at ``path`` now alone (``rundirs.replace_check``: something
    that is not ours appeared while the run worked). The final rename never replaces a
    ``path`` that appeared after that check (``rename_noreplace``). The folder gets the
    usual permissions (mkdtemp makes 0700). On any error the temporary folder is removed
    and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} exists (pass --overwrite to replace it)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; a run is for sharing
    try:
        write(tmp)
        # what was there when checked decides: a path absent then is never replaced later
        existed = os.path.lexists(path)
        if check is not None:
            check(path)
        if existed:
            if not overwrite:
                raise TargetAppeared(errno.EEXIST, "appeared meanwhile", str(path))
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "x")
            try:
                rename_noreplace(tmp, path)
            except BaseException:
                # put the old one back if its place is still free
                with contextlib.suppress(OSError):
                    rename_noreplace(old / "x", path)
                    old.rmdir()
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            rename_noreplace(tmp, path)
    except TargetAppeared as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileExistsError(f"{path} appeared while it was being written; it was left "
                              "alone and nothing was replaced") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
