"""Single files that the programs write (a sample grid, a scores file, pre-trained weights)
and how they stop (pure Python: usable before TensorFlow loads).

A file is only ever replaced when it exists as a plain file that the program itself wrote
(its own mark inside it says so: a PNG text chunk, a JSON field, a record with the file's
digest), and only with ``--overwrite``; a file that is not ours is never replaced, with or
without it. The check is made before any work starts and again at the moment of replacing
(``fileio.atomic_write``'s ``check``); a path that was free then is taken with ``rename_noreplace``,
so that a file that appeared there meanwhile is left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

from bir_keras.fileio import atomic_write as write_file  # noqa: F401 (the programs' writer)
from bir_keras.interrupts import EXIT_INTERRUPTED, caused_by_interrupt  # noqa: F401
from bir_keras.rundirs import PathRefused, check_writable

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# the temporary names of fileio (and write_file): ".<name>.tmp-<8 chars>[suffixes]"
TEMP_NAME = re.compile(r"^\.[^/]+\.(tmp|old)-[a-z0-9_]{8}(\.[A-Za-z0-9.]+)?$")


def sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def png_text(path: str | os.PathLike, key: str) -> str | None:
    """The value of the PNG ``tEXt`` chunk ``key`` in ``path`` (chunks before the image data
    only, as PIL writes them), or None if it is not a PNG or has no such chunk."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_SIGNATURE:
                return None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND"):
                    return None
                if kind == b"tEXt" and length <= 1 << 16:
                    name, _, value = f.read(length).partition(b"\0")
                    if name.decode("latin-1") == key:
                        return value.decode("latin-1")
                    f.seek(4, os.SEEK_CUR)  # the chunk's CRC
                else:
                    f.seek(length + 4, os.SEEK_CUR)
    except OSError:
        return None


def json_written_by(path: str | os.PathLike, program: str) -> bool:
    """Whether ``path`` is a JSON object whose ``written_by`` names ``program``."""
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("written_by") == program


def check_target(path: str | os.PathLike, flag: str, what: str) -> None:
    """Refuse a file path that cannot be written: a directory, a folder on it that is a
    file, a folder that cannot be written in."""
    p = Path(path)
    if p.is_dir():
        raise PathRefused(f"{flag}={path} is a directory; name the {what} file to write")
    if any(q.is_file() for q in p.parents):
        raise PathRefused(f"{flag}={path}: a folder on that path is a file")
    check_writable(p, flag)


def replaceable_file(path: str | os.PathLike, flag: str, overwrite: bool,
                     ours: Callable[[Path], bool], what: str) -> None:
    """Raise ``PathRefused`` unless ``path`` is absent, or ``overwrite`` is set and it is a
    plain file that ``what`` wrote (``ours(path)``)."""
    p = Path(path)
    if not os.path.lexists(p):
        return
    if p.is_symlink() or not p.is_file():
        raise PathRefused(f"{flag}={path} exists and is not a file written by {what}; it "
                          "is never replaced: choose another path")
    if not ours(p):
        raise PathRefused(f"{flag}={path} exists and was not written by {what}; it is never "
                          "replaced (not even with --overwrite): choose another path or "
                          "remove it yourself")
    if not overwrite:
        raise PathRefused(f"{flag}={path} exists (written by an earlier {what}); pass "
                          "--overwrite to replace it")


def replace_check(flag: str, ours: Callable[[Path], bool], what: str) -> Callable[[Path], None]:
    """The check ``write_file`` makes at the moment of replacing: what is at the path now
    must be absent or a file that ``what`` wrote (it was allowed to replace it when it
    started)."""
    def check(path: Path) -> None:
        try:
            replaceable_file(path, flag, True, ours, what)
        except PathRefused as e:
            raise PathRefused(f"{e} (it changed while the program was working: nothing was "
                              "replaced)") from None
    return check


def available_memory() -> int | None:
    """Bytes of memory this process can still take (the system's available memory, or the
    container's limit less its use where smaller), or None where unknown."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(max(0, int(limit) - int(used)))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def gib(n: float) -> str:
    """Bytes as GiB for a message (at least one decimal below 10)."""
    g = n / 2 ** 30
    return f"{g:.1f}" if g < 10 else f"{g:.0f}"
