"""Benchmarks: speed, flagfiles, the refactor yardstick (equivalence), float32 against
bfloat16 (precision), and a side-by-side run with the authors' code (vs_reference).

Every file a benchmark writes follows one rule (``bir_keras.appfiles``' rules), checked
before any work starts (one ``error:`` line, exit 2) and again at the moment of writing: a
file it did not write is never replaced, not even with ``--overwrite``; a file it wrote
(recognised by its content: a ``--out`` JSON carries ``written_by``, other files their own
format) is replaced only with ``--overwrite``; every file is written atomically.
``check_file``/``write_file`` are that rule for any file, ``check_out``/``write_out`` for a
benchmark's ``--out`` JSON.

Bad input on a benchmark's command line (a flag it does not have, a value of the wrong type,
a path flag given empty) is one ``error:`` line with exit code 2, before any work:
``Parser`` for the benchmarks that parse with argparse (used only by their ``main``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from bir_keras import appfiles
from bir_keras.rundirs import PathRefused

__all__ = ["PathRefused", "check_file", "write_file", "check_out", "write_out",
           "json_written_by", "Parser", "empty_path_message"]


def empty_path_message(name: str, required: bool = False) -> str:
    """What refuses a path flag given empty (``--out=``): it would otherwise fall back to the
    default, be skipped, or name the working directory."""
    return (f"--{name} is empty: name a path" if required else
            f"--{name} is empty: name a path, or leave the flag out for its default")


class Parser(argparse.ArgumentParser):
    """argparse for a benchmark's ``main``: a parse error is one ``error:`` line on stderr
    and exit code 2 (no usage block), and the options named in ``paths`` are refused when
    given empty. Only for a program's command line, never for library code."""

    def __init__(self, *args, paths: tuple[str, ...] = (), **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.paths = paths

    def error(self, message: str):  # one line, exit 2
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
        raise SystemExit(2)

    def parse_args(self, args=None, namespace=None):
        ns = super().parse_args(args, namespace)
        required = {a.dest for a in self._actions if a.required}
        for name in self.paths:
            value = getattr(ns, name, None)
            if value is not None and not str(value).strip():
                self.error(empty_path_message(name, name in required))
        return ns


def check_file(path: str | os.PathLike, flag: str, overwrite: bool,
               ours: Callable[[Path], bool], what: str) -> Path:
    """``path`` as a file ``what`` may write (``PathRefused`` otherwise): absent, or a
    plain file that ``ours(path)`` recognises as written by ``what`` and ``overwrite``."""
    appfiles.check_target(path, flag, f"{what} output")
    appfiles.replaceable_file(path, flag, overwrite, ours, what)
    return Path(path)


def write_file(path: str | os.PathLike, write: Callable[[str], object], flag: str,
               ours: Callable[[Path], bool], what: str) -> Path:
    """``write(tmp)`` then put it at ``path`` atomically, never over a file that is not
    ``what``'s (checked again at the moment of replacing)."""
    return appfiles.write_file(path, write, check=appfiles.replace_check(flag, ours, what))


def json_written_by(program: str) -> Callable[[Path], bool]:
    """The ``ours`` test of a JSON file marked ``written_by: program``."""
    return lambda p: appfiles.json_written_by(p, program)


def check_out(path: str | Path, overwrite: bool, program: str,
              ours: Callable[[Path], bool] | None = None) -> Path:
    """``--out`` as a path this benchmark may write (``PathRefused`` otherwise). ``ours``
    recognises its earlier results (default: a JSON whose ``written_by`` is ``program``)."""
    return check_file(path, "--out", overwrite, ours or json_written_by(program), program)


def write_out(path: Path, data: dict, program: str,
              ours: Callable[[Path], bool] | None = None) -> None:
    """``data`` as JSON with ``written_by``, atomically, never over a file it may not take."""
    text = json.dumps({"written_by": program, **data}, indent=1) + "\n"
    write_file(path, lambda tmp: Path(tmp).write_text(text), "--out",
               ours or json_written_by(program), program)
