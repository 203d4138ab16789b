"""Benchmarks: speed, flagfiles, the refactor yardstick (equivalence), float32 against
bfloat16 (precision), and a side-by-side run with the authors' code (vs_reference).

A benchmark's ``--out`` JSON carries ``written_by``: an existing file is replaced only when
the same benchmark wrote it and ``--overwrite`` is given (``bir_keras.appfiles``' rules,
checked before any run and again at the moment of writing)."""

from __future__ import annotations

import json
from pathlib import Path

from bir_keras import appfiles


def check_out(path: str | Path, overwrite: bool, program: str) -> Path:
    """``--out`` as a path this benchmark may write (``PathRefused`` otherwise)."""
    appfiles.check_target(path, "--out", f"{program} results")
    appfiles.replaceable_file(path, "--out", overwrite,
                              lambda p: appfiles.json_written_by(p, program), program)
    return Path(path)


def write_out(path: Path, data: dict, program: str) -> None:
    """``data`` as JSON with ``written_by``, atomically, never over a file it may not take."""
    text = json.dumps({"written_by": program, **data}, indent=1) + "\n"
    appfiles.write_file(path, lambda tmp: Path(tmp).write_text(text),
                        check=appfiles.replace_check(
                            "--out", lambda p: appfiles.json_written_by(p, program), program))
