"""Where a run writes, and what it may replace (pure Python: usable before TensorFlow loads).

Every directory this package writes as a whole (a run's ``--output_dir`` and each export)
holds a marker file, ``.bir_keras``, that says which kind it is. A directory is only ever
replaced when it carries the marker of its kind and holds nothing but what a run writes
there, so no file or directory that this package did not write is deleted, with or without
``--overwrite``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bir_keras.config import ConfigError

MARKER = ".bir_keras"
OUTPUT = "output"
EXPORT = "export"
# what a run writes into each kind of directory (anything else there is someone's file)
CONTENTS = {
    OUTPUT: {MARKER, "results.json", "accuracy.png", "accuracy_matrix.png", "tensorboard"},
    # quality.json: apps.evaluate_generator's scores, written there by default
    EXPORT: {MARKER, "saved_model", "checkpoint", "run.json", "quality.json"},
}


class PathRefused(ConfigError):
    """A path a run may not write to (exists and is not ours, unwritable, ...)."""


def write_marker(folder: str | os.PathLike, kind: str) -> None:
    """Mark ``folder`` as a directory of ``kind`` written by this package."""
    (Path(folder) / MARKER).write_text(json.dumps({"written_by": "bir_keras", "kind": kind}) + "\n")


def marker_kind(folder: str | os.PathLike) -> str | None:
    """The kind recorded in ``folder``'s marker, or None if it has none (or an unreadable one)."""
    try:
        info = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("written_by") != "bir_keras":
        return None
    return info.get("kind")


def foreign_entries(folder: str | os.PathLike, kind: str) -> list[str]:
    """Top-level names in ``folder`` that a run of this package does not write there."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name not in CONTENTS[kind])


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
    mark = marker_kind(p)
    if mark != kind:
        if mark is None:
            why = f"has no {MARKER} marker, so it was not written by bir_keras as a {what}"
        else:
            why = f"is marked as a bir_keras {mark} directory, not as a {what}"
        raise PathRefused(f"{flag}={path} exists and {why}; it is never replaced (not even "
                          "with --overwrite): choose another path or remove it yourself")
    others = foreign_entries(p, kind)
    if others:
        raise PathRefused(f"{flag}={path} holds files a run does not write "
                          f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); "
                          "it is never replaced: move them away or choose another path")
    if not overwrite:
        raise PathRefused(f"{flag}={path} exists (a {what} of an earlier run); pass "
                          "--overwrite to replace it")


def check_writable(path: str | os.PathLike, flag: str) -> None:
    """Refuse a path that could not be created or written, without creating anything:
    probes the nearest existing folder on the path with a real file (so that read-only
    file systems are caught even for root) and removes it again."""
    p = Path(os.path.abspath(path))
    existing = p.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PathRefused(f"{flag}={path}: cannot create it, {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".bir_keras.probe-", dir=existing)
    except OSError as e:
        raise PathRefused(f"{flag}={path}: cannot write in {existing} "
                          f"({e.strerror or e})") from None
    os.close(fd)
    os.remove(probe)


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
    """Whether one of two paths is the other or lies inside it."""
    pa, pb = Path(os.path.abspath(a)), Path(os.path.abspath(b))
    return pa == pb or pa in pb.parents or pb in pa.parents


def check_run_paths(output_dir: str, export_dir: str, resume_from: str | None,
                    overwrite: bool) -> None:
    """Everything about a run's paths that can be checked before any data loads."""
    if nested(output_dir, export_dir):
        raise PathRefused(f"--output_dir={output_dir} and --export_dir={export_dir} must not "
                          "be the same directory or inside one another")
    replaceable(output_dir, OUTPUT, "--output_dir", overwrite, "run's output directory")
    continuing_in_place = resume_from is not None and \
        os.path.abspath(resume_from) == os.path.abspath(export_dir)
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
RESUME_MAY_CHANGE = {"tasks", "data_dir", "method", "strategy", "jit_compile", "eval_batch",
                     "log_every"}


def read_resume_record(resume_from: str, flags: dict | None = None) -> dict:
    """The ``run.json`` of ``--resume_from``, refused if it is missing or interrupted and,
    given this run's resolved settings ``flags``, checked against them (``check_resume_flags``)."""
    run_json = Path(resume_from) / "run.json"
    if not run_json.is_file():
        raise PathRefused(f"--resume_from={resume_from}: no run.json there (not an export of "
                          "apps.train)")
    try:
        old = json.loads(run_json.read_text())
        old_flags = dict(old["flags"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PathRefused(f"--resume_from={resume_from}: unreadable run.json ({e})") from None
    if old.get("interrupted"):
        raise PathRefused(f"--resume_from={resume_from} holds a run interrupted part-way "
                          f"through task {old['interrupted'].get('task')}; resume from the "
                          "export written after the last complete task instead")
    if flags is not None:
        check_resume_flags(resume_from, old_flags, flags)
    return old


def check_resume_flags(resume_from: str, old_flags: dict, flags: dict) -> None:
    """Raise ``PathRefused`` naming the first setting (other than ``RESUME_MAY_CHANGE``) in
    which this run's ``flags`` differ from those the resumed run was trained with."""
    flags = json.loads(json.dumps(flags))  # as run.json holds them (tuples are lists)
    for key, value in flags.items():
        if key in RESUME_MAY_CHANGE or key not in old_flags:
            continue
        if old_flags[key] != value and not _same_number(old_flags[key], value):
            raise PathRefused(
                f"--resume_from={resume_from} was trained with --{key}={_show(old_flags[key])}, "
                f"this run has --{key}={_show(value)}; a run continues with the settings it was "
                f"trained with (only --{', --'.join(sorted(RESUME_MAY_CHANGE - {'method'}))} "
                "may change)")


def _same_number(a, b) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) \
        and not isinstance(a, bool) and not isinstance(b, bool) and float(a) == float(b)


def _show(v) -> str:
    return "(default)" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
