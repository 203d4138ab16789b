"""A program in a process of its own, stopped with Ctrl-C: the tests of interrupts start it
(``running``), wait until it has reached the point to stop it at (``wait_until`` a file or
a state, ``wait_for_line`` on its stdout), send SIGINT (``ctrl_c``) and read what it wrote.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sigint_as_a_terminal_sends_it() -> None:
    """``preexec_fn``: the child sees SIGINT as a terminal's Ctrl-C delivers it, even where
    the launcher ignores SIGINT (e.g. ``cmd &`` in a script), which a child inherits."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def running(args: list[str], env: dict | None = None, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE) -> Iterator[subprocess.Popen]:
    """``python args`` (e.g. ``["-m", "apps.train", ...]``) from the repository root, its
    output as text (pipes unless files are given); killed and reaped if it still runs when
    the block ends."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=stdout,
                            stderr=stderr, text=True, preexec_fn=sigint_as_a_terminal_sends_it)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _ended(proc: subprocess.Popen, what: str) -> AssertionError:
    stderr = proc.communicate()[1] or ""
    return AssertionError(f"the process ended (exit {proc.returncode}) before {what}: "
                          f"{stderr[-3000:]}")


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], deadline: float, what: str,
               every: float = 0.02) -> None:
    """Poll ``ready()`` every ``every`` seconds until it is true; fail, saying ``what`` did
    not happen, if the process ends first or the time ``deadline`` (``time.time()``)
    passes."""
    while not ready():
        if proc.poll() is not None:
            raise _ended(proc, what)
        assert time.time() < deadline, f"{what} did not happen in time"
        time.sleep(every)


def wait_for_line(proc: subprocess.Popen, prefix: str) -> str:
    """Read the process's stdout up to a line that starts with ``prefix``; fail if it ends
    first."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
    raise _ended(proc, f"a line {prefix!r}")


def ctrl_c(proc: subprocess.Popen, times: int = 1, gap: float = 0.05,
           timeout: float = 120) -> tuple[str | None, str | None]:
    """Send SIGINT ``times`` times, ``gap`` seconds apart, and wait for the process to end:
    (stdout, stderr) where they are pipes."""
    for i in range(times):
        if i:
            time.sleep(gap)
        proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=timeout)
