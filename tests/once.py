"""Expensive test inputs (a tiny training run and its export) made once per test session.

pytest-xdist gives each worker a fixture of its own, so a module- or session-scoped fixture
is made again by every worker that runs one of its tests (worksteal may hand a module's
tests to both): a 3-task BI-R run is 40-55 s of the suite's time on 2 cores. ``made_once``
makes the folder under the session's shared temporary directory, under a file lock: the
first worker makes it, the others wait for it and read it. Tests must treat it as
read-only (copy it to change it)."""

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

_DONE = ".made"


def made_once(tmp_path_factory: pytest.TempPathFactory, name: str,
              make: Callable[[Path], None]) -> Path:
    """``<session temp>/<name>``, filled by ``make(folder)`` by the first worker that asks;
    an attempt that failed (no ``.made`` marker) is made again from an empty folder."""
    base = tmp_path_factory.getbasetemp()
    # under xdist each worker's base is <session temp>/popen-gw<N>: share the parent
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / _DONE).exists():
            if folder.exists():   # a failed attempt of this session (pytest's own temp dir)
                shutil.rmtree(folder)
            folder.mkdir()
            make(folder)
            (folder / _DONE).write_text("")
    return folder
