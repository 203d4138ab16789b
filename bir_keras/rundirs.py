"""Where a run writes, and what it may replace (pure Python: usable before TensorFlow loads).

Every directory this package writes as a whole (a run's ``--output_dir``, each export, a
compare's table folder) holds a marker file, ``.bir_keras``, that says which kind it is and
lists every file and folder written into it. A directory is only ever replaced when it
carries the marker of its kind and holds nothing but what its marker lists (checked over the
whole tree: a file of the user's inside ``tensorboard/`` or ``saved_model/`` counts), and
only names a run of that kind writes; a sub-folder with a marker of its own (an export's
``task_progress/``) vouches for itself. So no file or directory that this package did not
write is deleted, with or without ``--overwrite``.

A run claims the paths it will write (``claim``: an exclusive ``flock`` held until the run
ends), so two runs never write one directory; and the check is made again at the moment a
directory is replaced (``replace_check``, passed to ``fileio.atomic_dir``, whose final rename
refuses a target that appeared), so a folder created there while a run trains is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from bir_keras.config import ConfigError

MARKER = ".bir_keras"
OUTPUT = "output"
EXPORT = "export"
PROGRESS = "progress"
COMPARE = "compare"
# what a run writes into each kind of directory (anything else there is someone's file)
CONTENTS = {
    OUTPUT: {MARKER, "results.json", "accuracy.png", "accuracy_matrix.png", "tensorboard"},
    # quality.json: apps.evaluate_generator's scores, written there by default;
    # task_progress: the checkpoint inside a task (--checkpoint_every), marked on its own
    # stream.npz: a run on your own data keeps its tasks' test sets there (data.streams)
    EXPORT: {MARKER, "saved_model", "checkpoint", "run.json", "quality.json", "task_progress",
             "stream.npz"},
    PROGRESS: {MARKER, "checkpoint", "progress.json"},
    # apps.compare's --output_dir; its runs/ hold output and export directories of their own
    COMPARE: {MARKER, "table.md", "table.csv", "accuracy.png", "sweep.png", "runs"},
}


# names a run writes under a pattern: the scores of apps.evaluate_generator that an export
# kept from before it learned more tasks (``export.export_run``)
CONTENT_PATTERNS = {EXPORT: re.compile(r"^quality-after-task\d+\.json$")}


def _ours(name: str, kind: str) -> bool:
    """Whether a run of ``kind`` writes a top-level entry called ``name``."""
    pattern = CONTENT_PATTERNS.get(kind)
    return name in CONTENTS[kind] or (pattern is not None and bool(pattern.match(name)))


class PathRefused(ConfigError):
    """A path a run may not write to (exists and is not ours, unwritable, ...)."""


def _listing(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (relative POSIX paths, folders with a trailing
    ``/``), but the marker itself and what lies inside a sub-folder with a marker of its own."""
    out = []
    for root, dirs, files in os.walk(folder, onerror=_raise):
        rel = Path(root).relative_to(folder)
        for d in list(dirs):
            if (Path(root) / d / MARKER).is_file():
                dirs.remove(d)  # vouches for itself
            out.append((rel / d).as_posix() + "/")
        out += [(rel / f).as_posix() for f in files if not (rel == Path(".") and f == MARKER)]
    return sorted(out)


def _raise(e: OSError) -> None:
    raise e


def write_marker(folder: str | os.PathLike, kind: str) -> None:
    """Mark ``folder`` as a directory of ``kind`` written by this package, listing what it
    holds now (call it last, once everything is written)."""
    from bir_keras.fileio import atomic_write_text

    info = {"written_by": "bir_keras", "kind": kind, "files": _listing(Path(folder))}
    atomic_write_text(Path(folder) / MARKER, json.dumps(info) + "\n")


def _marker(folder: str | os.PathLike) -> dict | None:
    try:
        info = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("written_by") != "bir_keras":
        return None
    return info


def marker_kind(folder: str | os.PathLike) -> str | None:
    """The kind recorded in ``folder``'s marker, or None if it has none (or an unreadable one)."""
    info = _marker(folder)
    return None if info is None else info.get("kind")


def foreign_entries(folder: str | os.PathLike, kind: str) -> list[str]:
    """Paths in ``folder`` (the whole tree) that a run of this package did not write there:
    not listed by its marker, or under a name a run of ``kind`` never writes. A sub-folder
    with a marker of its own is checked against that marker."""
    folder = Path(folder)
    info = _marker(folder) or {}
    listed = set(info.get("files") or [])
    try:
        found = _listing(folder)
    except OSError as e:
        return [f"{e.filename or folder} (unreadable: {e.strerror or e})"]

    def self_marked(p: str) -> bool:
        return p.endswith("/") and (folder / p / MARKER).is_file()

    foreign = [p for p in found if not _ours(p.split("/", 1)[0], kind)
               or (p not in listed and not self_marked(p))]
    # sub-folders that vouch for themselves (their contents were not listed above)
    for p in found:
        sub = folder / p.rstrip("/")
        if p not in foreign and self_marked(p):
            sub_kind = marker_kind(sub)
            if sub_kind not in CONTENTS:
                foreign.append(p)
                continue
            foreign += [f"{p}{q}" for q in foreign_entries(sub, sub_kind)]
    # a folder is foreign as a whole: do not also list what is inside it
    top = [p for p in sorted(foreign)
           if not any(p != q and q.endswith("/") and p.startswith(q) for q in foreign)]
    return top


def replaceable(path: str | os.PathLike, kind: str, flag: str, overwrite: bool,
                what: str = "run directory") -> None:
    """Raise ``PathRefused`` unless ``path`` is absent, or ``overwrite`` is set and ``path`` is
    a directory of ``kind`` that this package wrote and that holds nothing else."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return
    if p.is_symlink() or not p.is_dir():
        raise PathRefused(f"{flag}={path} exists and is not a directory written by bir_keras; "
                          "it is never replaced: choose another path")
    info = _marker(p)
    mark = None if info is None else info.get("kind")
    if mark != kind:
        if mark is None:
            why = f"has no {MARKER} marker, so it was not written by bir_keras as a {what}"
        else:
            why = f"is marked as a bir_keras {mark} directory, not as a {what}"
        raise PathRefused(f"{flag}={path} exists and {why}; it is never replaced (not even "
                          "with --overwrite): choose another path or remove it yourself")
    if "files" not in info:
        raise PathRefused(f"{flag}={path} was written by an older bir_keras whose marker does "
                          "not list its files; it is never replaced: move it away or choose "
                          "another path")
    others = foreign_entries(p, kind)
    if others:
        raise PathRefused(f"{flag}={path} holds files a run does not write "
                          f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); "
                          "it is never replaced: move them away or choose another path")
    if not overwrite:
        raise PathRefused(f"{flag}={path} exists (a {what} of an earlier run); pass "
                          "--overwrite to replace it")


def replace_check(kind: str, flag: str, what: str = "run directory") -> Callable[[Path], None]:
    """The check ``fileio.atomic_dir`` makes at the moment it replaces a directory: whatever
    is there now must be a directory of ``kind`` holding only what bir_keras wrote (the run
    was allowed to replace it, or wrote it itself, when it started)."""
    def check(path: Path) -> None:
        try:
            replaceable(path, kind, flag, overwrite=True, what=what)
        except PathRefused as e:
            raise PathRefused(f"{e} (it changed while the run was working: nothing was "
                              "replaced)") from None
    return check


# -- claims: one writer per path --------------------------------------------------------
_held: dict[str, list] = {}   # lock key -> [file descriptor, count] (claims are re-entrant)


def _lock_dir() -> Path:
    d = Path(tempfile.gettempdir()) / "bir_keras-locks"
    d.mkdir(mode=0o1777, exist_ok=True)
    return d


def _lock_key(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(path))


@contextlib.contextmanager
def claim(path: str | os.PathLike, flag: str) -> Iterator[None]:
    """Hold an exclusive claim on ``path`` for the block: a second process (or run) that
    claims it meanwhile is refused with ``PathRefused``. The lock is a ``flock`` on a file in
    the temporary folder keyed by the path's real location, so a kill -9 releases it. On
    entry, temporary siblings of ``path`` left by a killed writer are removed."""
    key = _lock_key(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    lock = _lock_dir() / (hashlib.sha1(key.encode()).hexdigest()[:24] + ".lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise PathRefused(f"{flag}={path} is being written by another run (process "
                              f"{holder or '?'}); wait for it to finish or choose another "
                              "path") from None
        if os.path.exists(lock) and os.stat(lock).st_ino == os.fstat(fd).st_ino:
            break  # not unlinked by a releasing holder between our open and flock
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[key] = [fd, 1]
    try:
        remove_stale_temps(path)
        yield
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def claimed(path: str | os.PathLike) -> bool:
    """Whether this process holds the claim on ``path``."""
    return _lock_key(path) in _held


def _temp_pattern(name: str) -> re.Pattern:
    # fileio's temporary names: ".<name>.tmp-<8 chars>[suffixes]", ".<name>.old-<8 chars>"
    return re.compile(rf"^\.{re.escape(name)}\.(tmp|old)-[a-z0-9_]{{8}}(\.[A-Za-z0-9.]+)?$")


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``path`` (and temporaries inside it, of the names a
    run writes there) that a killed writer left; only call while holding ``claim(path)``
    (every writer of ``path`` holds it, so any temporary of it is stale)."""
    p = Path(path)
    removed = []
    places = [(p.parent, [p.name])]
    if p.is_dir() and not p.is_symlink() and marker_kind(p) in CONTENTS:
        places.append((p, sorted(CONTENTS[marker_kind(p)] - {MARKER})))
    for folder, names in places:
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        patterns = [_temp_pattern(n) for n in names]
        for e in entries:
            if any(pt.match(e.name) for pt in patterns):
                if e.is_dir() and not e.is_symlink():
                    shutil.rmtree(e, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        e.unlink()
                removed.append(e)
    return removed


def check_writable(path: str | os.PathLike, flag: str) -> None:
    """Refuse a path that could not be created or written, without creating anything:
    probes the nearest existing folder on the path with a real file (so that read-only
    file systems are caught even for root) and removes it again."""
    p = Path(os.path.abspath(path))
    existing = _nearest_existing(p)
    if not existing.is_dir():
        raise PathRefused(f"{flag}={path}: cannot create it, {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".bir_keras.probe-", dir=existing)
    except OSError as e:
        raise PathRefused(f"{flag}={path}: cannot write in {existing} "
                          f"({e.strerror or e})") from None
    os.close(fd)
    os.remove(probe)


# what the temporary and sibling names add to a directory's name (".NAME.tmp-12345678.x",
# "NAME-interrupted-12"), so that they fit wherever the name itself fits
NAME_ROOM = 24


def _nearest_existing(path: Path) -> Path:
    """The nearest folder on the absolute ``path`` that exists (a name too long to exist
    is skipped like any missing one)."""
    existing = path.parent
    while existing != existing.parent:
        try:
            if existing.exists():
                break
        except OSError:
            pass
        existing = existing.parent
    return existing


def check_name_lengths(path: Path, flag: str) -> None:
    """Refuse an absolute ``path`` whose last name (with the room ``NAME_ROOM`` for the
    names written beside it), another name on it, or its whole length is longer than the
    file system of its nearest existing folder allows (errno 36 later)."""
    existing = _nearest_existing(path)
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for i, part in enumerate(path.parts[1:]):
        room = NAME_ROOM if i == len(path.parts) - 2 else 0
        if len(os.fsencode(part)) + room > name_max:
            raise PathRefused(f"{flag}={path}: the name {part[:40]!r}... is "
                              f"{len(os.fsencode(part))} bytes, longer than the "
                              f"{name_max - room} this file system allows there: choose a "
                              "shorter one")
    if len(os.fsencode(str(path))) + NAME_ROOM > path_max:
        raise PathRefused(f"{flag}={path}: the path is {len(os.fsencode(str(path)))} bytes, "
                          f"longer than the {path_max - NAME_ROOM} this file system allows: "
                          "choose a shorter one")


def default_export_dir(output_dir: str | os.PathLike) -> Path:
    """``saved_models/<output_dir>``: the whole path of the output directory (relative to the
    working directory where it lies inside it), so that two runs never share an export."""
    out = Path(os.path.abspath(output_dir))
    cwd = Path(os.getcwd())
    try:
        rel = out.relative_to(cwd)
    except ValueError:
        rel = out.relative_to(out.anchor)
    return Path("saved_models") / rel


def nested(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether one of two paths is the other or lies inside it, as written or where their
    symbolic links lead (two names of one folder are the same directory)."""
    for where in (os.path.abspath, os.path.realpath):
        pa, pb = Path(where(a)), Path(where(b))
        if pa == pb or pa in pb.parents or pb in pa.parents:
            return True
    return False


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file or folder (through symbolic links too)."""
    return os.path.realpath(a) == os.path.realpath(b)


def check_run_paths(output_dir: str, export_dir: str, resume_from: str | None,
                    overwrite: bool) -> None:
    """Everything about a run's paths that can be checked before any data loads."""
    for path, flag in ((output_dir, "--output_dir"), (export_dir, "--export_dir")):
        if not str(path):
            raise PathRefused(f"{flag} is empty: name a folder, or leave the flag out for "
                              "the default")
        check_name_lengths(Path(os.path.abspath(path)), flag)
    if nested(output_dir, export_dir):
        raise PathRefused(f"--output_dir={output_dir} and --export_dir={export_dir} must not "
                          "be the same directory or inside one another")
    replaceable(output_dir, OUTPUT, "--output_dir", overwrite, "run's output directory")
    continuing_in_place = resume_from is not None and same_path(resume_from, export_dir)
    replaceable(export_dir, EXPORT, "--export_dir", overwrite or continuing_in_place,
                "run's export")
    if resume_from is not None and nested(resume_from, output_dir):
        raise PathRefused(f"--resume_from={resume_from} lies inside --output_dir={output_dir}")
    check_writable(output_dir, "--output_dir")
    check_writable(export_dir, "--export_dir")


def free_sibling(path: str | os.PathLike, kind: str) -> Path:
    """``path`` if it is absent or replaceable as ``kind``, else ``path-2``, ``path-3``, ..."""
    p = Path(path)
    candidate, k = p, 1
    while True:
        try:
            replaceable(candidate, kind, "path", overwrite=True)
            return candidate
        except PathRefused:
            k += 1
            candidate = p.parent / f"{p.name}-{k}"


# settings a continued run may change: how much more to learn, where the data lies, how the
# step executes; every other setting shapes the networks or the training and must match
# (a run on your own data may continue on new data: its split into tasks with it)
RESUME_MAY_CHANGE = {"tasks", "data_dir", "classes_per_task", "task_classes", "method",
                     "strategy", "jit_compile", "eval_batch", "eval_n", "log_every",
                     "notes"}
# what a refusal lists (eval_batch is a Config field without a flag; notes are what resolve
# told the user, such as a --data_dir that the experiment does not read)
_RESUME_FLAGS = sorted(RESUME_MAY_CHANGE - {"method", "eval_batch", "notes"})


class RunRecordError(ConfigError):
    """A run record (``run.json``, a task's ``progress.json``) that cannot be read
    (``cannot_read``: a file error, ``why`` its reason) or is not one apps.train writes
    (``why`` says what is wrong)."""

    def __init__(self, path: str | os.PathLike, why: str, cannot_read: bool = False):
        self.path, self.why, self.cannot_read = Path(path), why, cannot_read
        super().__init__(f"{path}: cannot read it ({why})" if cannot_read
                         else f"{path}: not a run record of apps.train ({why})")


def read_run_record(path: str | os.PathLike, need: tuple[str, ...] = (),
                    counts: dict[str, int] | None = None, count_words: str = "a count") -> dict:
    """The run record at ``path`` as apps.train writes it: a JSON object whose ``flags`` and
    ``protocol`` are JSON objects, whose ``protocol.input_shape`` is a shape, and whose
    ``counts`` (a key, or ``protocol.<key>``, and the least value it may take) are integers
    of at least that, each where present (``need``: keys that must be, e.g. ``flags``,
    ``tasks_learned``); else ``RunRecordError`` saying what (a bad count "is <value>, not
    <count_words>")."""
    path = Path(path)

    def bad(why: str) -> RunRecordError:
        return RunRecordError(path, why)

    try:
        run = json.loads(path.read_text())
    except OSError as e:
        raise RunRecordError(path, str(e.strerror or e), cannot_read=True) from None
    except ValueError as e:  # not JSON, not UTF-8
        raise bad(f"not JSON: {e}") from None
    if not isinstance(run, dict):
        raise bad("not a JSON object")
    for key in ("flags", "protocol"):
        if (key in need or key in run) and not isinstance(run.get(key), dict):
            raise bad(f"its {key} is not a JSON object" if key == "protocol"
                      else "its flags are not a JSON object")
    protocol = run.get("protocol", {})
    for key, least in (counts or {}).items():
        where, name = (protocol, key.split(".", 1)[1]) if key.startswith("protocol.") \
            else (run, key)
        if name not in where and key not in need:
            continue
        value = where.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise bad(f"{key} is {value!r}, not {count_words}")
    shape = protocol.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and shape and all(
            isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2 ** 31 for d in shape)):
        raise bad(f"protocol.input_shape is {shape!r}, not a shape")
    return run


def read_resume_record(resume_from: str, flags: dict | None = None) -> dict:
    """The ``run.json`` of ``--resume_from`` (``read_run_record``), refused
    (``PathRefused``) if it is missing, malformed or interrupted and, given this run's
    resolved settings ``flags``, checked against them (``check_resume_flags``)."""
    # a checkpoint inside a task (--checkpoint_every) is newer than the export beside it
    run_json = Path(resume_from) / "task_progress" / "progress.json"
    if not run_json.is_file():
        run_json = Path(resume_from) / "run.json"
    if not run_json.is_file():
        raise PathRefused(f"--resume_from={resume_from}: no run.json there (not an export of "
                          "apps.train)")
    try:
        old = read_run_record(run_json, need=("flags", "tasks_learned"),
                              counts={"tasks_learned": 0})
    except RunRecordError as e:
        raise PathRefused(f"--resume_from={resume_from}: unreadable {run_json.name} "
                          f"({e.why})") from None
    if old.get("interrupted"):
        raise PathRefused(f"--resume_from={resume_from} holds a run interrupted part-way "
                          f"through task {old['interrupted'].get('task')}; resume from the "
                          "export written after the last complete task instead")
    if flags is not None:
        check_resume_flags(resume_from, old["flags"], flags)
    return old


def check_resume_flags(resume_from: str, old_flags: dict, flags: dict) -> None:
    """Raise ``PathRefused`` naming the first setting (other than ``RESUME_MAY_CHANGE``) in
    which this run's ``flags`` differ from those the resumed run was trained with."""
    flags = json.loads(json.dumps(flags))  # as run.json holds them (tuples are lists)
    old_flags = dict(old_flags)
    if old_flags.get("conv_weights") is None and flags.get("conv_weights") is not None:
        from bir_keras.config import has_conv_layers
        from bir_keras.weightsfile import LEGACY_DEFAULT_TRUNK

        try:
            conv = has_conv_layers(old_flags.get("experiment") or flags.get("experiment"))
        except (KeyError, TypeError):  # no experiment known
            conv = False
        if conv:
            # a CIFAR run recorded before the trunk's name was: it loaded the then default
            old_flags["conv_weights"] = LEGACY_DEFAULT_TRUNK
    for key, value in flags.items():
        if key in RESUME_MAY_CHANGE or key not in old_flags:
            continue
        if old_flags[key] != value and not _same_number(old_flags[key], value):
            raise PathRefused(
                f"--resume_from={resume_from} was trained with --{key}={_show(old_flags[key])}, "
                f"this run has --{key}={_show(value)}; a run continues with the settings it was "
                f"trained with (only --{', --'.join(_RESUME_FLAGS)} "
                "may change)")


def _same_number(a, b) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) \
        and not isinstance(a, bool) and not isinstance(b, bool) and float(a) == float(b)


def _show(v) -> str:
    return "(default)" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def seed_dirs(output_dir: str, export_dir: str, seeds: list[int]) -> list[tuple[str, str]]:
    """Where each seed of a packed run (``--seeds_at_once``) writes: ``<output_dir>/seed<s>``
    and ``<export_dir>/seed<s>``; one seed alone writes to the directories themselves."""
    if len(seeds) == 1:
        return [(str(output_dir), str(export_dir))]
    return [(str(Path(output_dir) / f"seed{s}"), str(Path(export_dir) / f"seed{s}"))
            for s in seeds]
