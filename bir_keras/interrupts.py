"""Ctrl-C that takes effect between training steps, not wherever the main thread happens to be.

Python raises ``KeyboardInterrupt`` at the next bytecode the main thread runs, which may be
inside TensorFlow's C++ code calling back into Python (a tensor conversion, a summary
write): seen there as a ``SystemError``, and as a segmentation fault (no traceback,
nothing saved) in about 1 of 12 Ctrl-Cs sent mid-run to ``apps.train`` before this module
existed (CI saw it too; none in 24 with it). Inside ``deferred()`` the first SIGINT only
records the request; the training loop calls ``raise_if_requested()`` between compiled
calls, where the interrupt is an ordinary Python exception. A second SIGINT raises at
once, for a user who will not wait.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

_requested = False


def _handler(signum, frame) -> None:
    global _requested
    if _requested:
        raise KeyboardInterrupt
    _requested = True
    # os.write, not print: the main thread may be inside a write to sys.stderr right now,
    # and a buffered stream refuses a re-entrant write (RuntimeError)
    os.write(2, b"Ctrl-C: stopping after the current steps and saving "
                b"(press again to stop at once)\n")


@contextlib.contextmanager
def deferred():
    """Within the block, the first Ctrl-C is held until ``raise_if_requested()``; a Ctrl-C
    still held when the block ends is raised there. Only Python's own SIGINT handler is
    replaced: a process that ignores SIGINT, or whose caller installed its own handler, or
    code off the main thread, keeps what it had."""
    global _requested
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    _requested = False
    signal.signal(signal.SIGINT, _handler)
    try:
        yield
        raise_if_requested()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _requested = False


def raise_if_requested() -> None:
    """Raise ``KeyboardInterrupt`` here if Ctrl-C was pressed since ``deferred()`` began."""
    global _requested
    if _requested:
        _requested = False
        raise KeyboardInterrupt
