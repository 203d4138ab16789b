"""A sweep's folder and its cache of runs (pure Python: no TensorFlow).

The folder (``apps.compare``'s ``--output_dir``) is the sweep's own, marked by a
``.bir_keras`` marker of kind ``compare`` that lists what it holds (``bir_keras.rundirs``):
a new or empty folder becomes one; an existing folder without that marker, or holding
anything else, is refused (``check_output_dir``; nothing in it is ever replaced), and
``Folder`` rewrites the marker as runs are added, never over something that is not ours.

A run is cached when its ``out/results.json`` exists beside a ``stamp.json`` with its
stamp (``is_cached``); ``finish`` writes the stamp once a run has finished, after moving
each seed of a pack into its own run directory (``unpack``).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bir_keras import appfiles, rundirs
from bir_keras.fileio import atomic_dir, atomic_write_json, atomic_write_text
from bir_keras.sweeps.planning import Run

NAME_MAX, PATH_MAX = 255, 4096  # bytes of a file name, of a path (Linux)
# the longest path a compare folder holds beyond its own (runs/<run folder name, up to ~160>
# /export/seed<s>-interrupted/saved_model/variables/..., temporaries): the rest is its own
PATH_ROOM = PATH_MAX - 640
# the folder of a pack of seeds (``pack_dir``): <tag>-s<first>-s<last>-pack-<stamp>
PACK_NAME = re.compile(r".+-s[0-9]+-s[0-9]+-pack-[0-9a-f]{12}")


def is_cached(run: Run) -> bool:
    """A run is done when its results.json exists with the same stamp."""
    res = run.dir / "out" / "results.json"
    st = run.dir / "stamp.json"
    try:
        return res.exists() and json.loads(st.read_text())["stamp"] == run.stamp
    except (OSError, ValueError, KeyError, TypeError):
        return False


def pack_dir(group: list[Run]) -> Path:
    """Where the runs of ``group`` execute: one seed in its own run directory; a pack in one
    folder of its own beside them, whose seeds ``unpack`` moves once it has finished."""
    first = group[0]
    if len(group) == 1:
        return first.dir
    return first.dir.with_name(f"{first.tag}-s{first.seed}-s{group[-1].seed}-pack-"
                               f"{first.stamp}")


def finish(group: list[Run]) -> Path:
    """After the process of ``group`` ended well: each seed of a pack moved into its run
    directory, and each run's stamp written (it is cached from now on); the log of the
    group's first run."""
    d = pack_dir(group)
    for run in group:
        if len(group) > 1:
            unpack(d, run)
        atomic_write_text(run.dir / "stamp.json",
                          json.dumps({"stamp": run.stamp, "args": list(run.args)}))
    if len(group) == 1:
        return d / "log.txt"
    # the pack's folder, now empty but for its log
    try:
        (d / "log.txt").unlink()
        for sub in ("out", "export", ""):
            os.rmdir(d / sub)
    except OSError:
        pass
    return group[0].dir / "log.txt"


def unpack(pack: Path, run: Run) -> None:
    """Move one seed of a finished pack (``<pack>/out/seed<s>``, ``<pack>/export/seed<s>``)
    into its run directory (``out``, ``export``; an earlier unfinished run of it there is
    replaced only if it is a run directory bir_keras wrote), with the pack's log; its
    results.json then names the export where it now is."""
    s = run.seed
    dest = run.dir
    dest.mkdir(parents=True, exist_ok=True)

    def move_into(src: Path, fix=None):
        def write(tmp: Path) -> None:
            for entry in sorted(os.listdir(src)):
                os.rename(src / entry, tmp / entry)
            if fix:
                fix(tmp)
        return write

    def export_here(tmp: Path) -> None:
        rec = json.loads((tmp / "results.json").read_text())
        rec["export_dir"] = str(dest / "export")
        atomic_write_json(tmp / "results.json", rec)

    for name, kind, flag, fix in (("export", rundirs.EXPORT, "--export_dir", None),
                                  ("out", rundirs.OUTPUT, "--output_dir", export_here)):
        src = pack / name / f"seed{s}"
        atomic_dir(dest / name, move_into(src, fix), overwrite=True,
                   check=rundirs.replace_check(kind, flag))
        os.rmdir(src)
    (dest / "log.txt").write_text(f"seed {s} of the pack {pack.name}, whose log follows\n"
                                  + (pack / "log.txt").read_text(errors="replace"))


def _expected(entry: str) -> bool:
    """Whether an entry the marker does not list is one that a compare (or an apps.train
    run of it) may have left since the marker was last written: ``runs/``, a run directory
    in it, its ``log.txt`` or ``stamp.json``, a temporary file of an atomic write, and the
    ``out/`` and ``export/`` folders of a pack of seeds, in which each seed's directories
    (``seed<s>``, ``seed<s>-interrupted`` after Ctrl-C) carry markers of their own, checked
    against them."""
    parts = entry.rstrip("/").split("/")
    base = parts[-1]
    if appfiles.TEMP_NAME.match(base):
        return True
    if parts[0] != "runs":
        return False
    if len(parts) == 3 and entry.endswith("/") and PACK_NAME.fullmatch(parts[1]) \
            and base in ("out", "export"):
        return True
    return (len(parts) <= 2 and entry.endswith("/")) or \
        (len(parts) == 3 and base in ("log.txt", "stamp.json"))


def unexpected_entries(root: Path) -> list[str]:
    """What ``root`` (a compare folder) holds that a compare did not write (looking into
    the folders it may have left unlisted: what they hold must be expected too; a symbolic
    link is never a compare's)."""
    out = []
    for e in rundirs.foreign_entries(root, rundirs.COMPARE):
        if not _expected(e) or (root / e).is_symlink():
            out.append(e)
        elif e.endswith("/") and not appfiles.TEMP_NAME.match(e.rstrip("/").split("/")[-1]):
            out += _unlisted(root, e)
    return out


def _unlisted(root: Path, folder: str) -> list[str]:
    """What the folder ``folder`` (relative to ``root``, expected but not listed by the
    marker) holds that is not expected; a sub-folder with a marker of its own is checked
    against it (``rundirs.foreign_entries``)."""
    try:
        names = sorted(os.listdir(root / folder))
    except OSError as e:
        return [f"{folder} (unreadable: {e.strerror or e})"]
    out = []
    for name in names:
        path = root / folder / name
        is_dir = path.is_dir() and not path.is_symlink()
        entry = f"{folder}{name}{'/' if is_dir else ''}"
        if is_dir and (path / rundirs.MARKER).is_file():
            kind = rundirs.marker_kind(path)
            out += [f"{entry}{q}" for q in rundirs.foreign_entries(path, kind)] \
                if kind in rundirs.CONTENTS else [entry]
        elif not _expected(entry) or path.is_symlink():
            out.append(entry)
        elif is_dir and not appfiles.TEMP_NAME.match(name):
            out += _unlisted(root, entry)
    return out


def check_output_path(root: Path, flag: str = "--output_dir") -> None:
    """Refuse (``PathRefused``) a folder path with a NUL character, whose name, or a name
    in it, is too long for the file system, or too long for the runs it will hold."""
    if "\0" in str(root):
        raise rundirs.PathRefused(f"{flag}={str(root)!r} holds a NUL character")
    for part in root.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise rundirs.PathRefused(
                f"{flag}={root}: the name {part[:40]}... is {len(os.fsencode(part))} "
                f"bytes long, the file system allows at most {NAME_MAX}")
    if len(os.fsencode(str(root))) > PATH_ROOM:
        raise rundirs.PathRefused(
            f"{flag}={root} is {len(os.fsencode(str(root)))} bytes long: the runs in it "
            f"need paths of up to {PATH_MAX - PATH_ROOM} bytes more than it, the file system "
            f"allows {PATH_MAX}; choose a shorter path")


def check_output_dir(root: Path, flag: str = "--output_dir") -> None:
    """Refuse (``PathRefused``) a folder that a compare may not write into: it must be
    absent, empty or marked as a compare folder holding only what a compare writes."""
    try:
        _check_output_dir(root, flag)
    except OSError as e:   # e.g. a name too long for the file system
        raise rundirs.PathRefused(f"{flag}={root}: cannot check it "
                                  f"({e.strerror or e})") from None


def _check_output_dir(root: Path, name: str) -> None:
    flag = f"{name}={root}"
    if not os.path.lexists(root):
        rundirs.check_writable(root, name)
        return
    if root.is_symlink() or not root.is_dir():
        raise rundirs.PathRefused(f"{flag} exists and is not a directory; it is never "
                                  f"replaced: choose another {name}")
    try:
        entries = sorted(p.name for p in root.iterdir())
    except OSError as e:
        raise rundirs.PathRefused(f"{flag}: cannot read it ({e.strerror or e})") from None
    if not entries:
        rundirs.check_writable(root, name)
        return
    kind = rundirs.marker_kind(root)
    if kind != rundirs.COMPARE:
        why = (f"is marked as a bir_keras {kind} directory" if kind else
               f"has no {rundirs.MARKER} marker of apps.compare")
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise rundirs.PathRefused(
            f"{flag} exists, holds {shown} and {why}: apps.compare writes its tables and runs "
            "only into a new or empty folder, or one an earlier compare wrote; nothing there "
            f"is replaced: choose another {name}")
    others = unexpected_entries(root)
    if others:
        raise rundirs.PathRefused(
            f"{flag} holds files apps.compare did not write ({', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}); nothing is written into it: move them "
            f"away or choose another {name}")
    rundirs.check_writable(root, name)


class Folder:
    """The compare folder while this compare holds it: its marker is rewritten as runs are
    added (never over something that is not ours), and at the end."""

    def __init__(self, root: Path):
        self.root = root
        self.lock = threading.Lock()
        self.written: set[str] = set()  # the tables and plots this compare wrote

    def write(self, name: str, write: Callable[[str], object]) -> Path:
        """Write the table or plot ``name`` (``write(tmp_path)``), never over a file that is
        not a compare's (checked at the moment of replacing it)."""
        path = appfiles.write_file(self.root / name, write, check=self.check)
        self.written.add(name)
        return path

    def mark(self) -> bool:
        """List what the folder holds in its marker, unless something appeared there that
        is not a compare's (then the marker is left as it was)."""
        with self.lock:
            for _ in range(5):  # a run renaming its temporary folder while this walks
                try:
                    if set(unexpected_entries(self.root)) - self.written:
                        return False
                    rundirs.write_marker(self.root, rundirs.COMPARE)
                    return True
                except FileNotFoundError:
                    time.sleep(0.05)
            return False

    def check(self, path: Path) -> None:
        """At the moment a table or plot replaces ``path``: it must be absent or ours."""
        if not os.path.lexists(path):
            return
        if path.name in rundirs.foreign_entries(self.root, rundirs.COMPARE) \
                or path.is_symlink() or not path.is_file():
            raise rundirs.PathRefused(
                f"{path} appeared while apps.compare was working and is not its own; nothing "
                f"was replaced (the finished runs are cached in {self.root / 'runs'}): move it "
                "away and run the same command again")
