"""Ctrl-C that takes effect between training steps, not wherever the main thread happens to be.

Python raises ``KeyboardInterrupt`` at the next bytecode the main thread runs, which may be
inside TensorFlow's C++ code calling back into Python (a tensor conversion, a summary
write): seen there as a ``SystemError``, and as a segmentation fault (no traceback,
nothing saved) in about 1 of 12 Ctrl-Cs sent mid-run to ``apps.train`` before this module
existed (CI saw it too; none in 24 with it). Inside ``deferred()`` the first SIGINT only
records the request; the training loop calls ``raise_if_requested()`` between compiled
calls, where the interrupt is an ordinary Python exception.

A second SIGINT stops the process at once, even while the main thread is inside a long
compiled call (where no Python signal handler can run until the call returns): the signal's
wake-up byte (``signal.set_wakeup_fd``) is read by a watcher thread, which runs the
registered clean-ups (``on_hard_stop``: temporary folders), flushes what the program had
printed to ``sys.stdout`` and ``sys.stderr`` (a file or a pipe holds it in a buffer, which
``os._exit`` would drop), prints one line and ends the process with exit code 130. What
was saved before (complete exports, checkpoints inside the task) stays: every write is
atomic.

Both lines go straight to the file descriptor behind ``sys.stderr``: where the apps filter
TensorFlow's log lines out of descriptor 2 (``apps.common.quiet_tensorflow``), a line
written to descriptor 2 waits in that filter's pipe, and the hard stop would end the
process before the filter passed it on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable

EXIT_INTERRUPTED = 130
HARD_STOP_MESSAGE = (b"Ctrl-C again: stopped at once; what was already saved stays (the "
                     b"last complete export and any checkpoint inside the task)\n")

_requested = False
_cleanups: list[Callable[[], object]] = []


def _handler(signum, frame) -> None:
    global _requested
    if _requested:
        _hard_stop()   # the watcher does the same when the main thread is busy in C
    _requested = True
    # os.write, not print: the main thread may be inside a write to sys.stderr right now,
    # and a buffered stream refuses a re-entrant write (RuntimeError)
    _say(b"Ctrl-C: stopping after the current steps and saving (press again to stop at "
         b"once)\n")


def _stderr_fd() -> int:
    """The file descriptor behind ``sys.stderr`` (2 where it has none, as under pytest)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):   # io.UnsupportedOperation, closed
        return 2


def _say(line: bytes) -> None:
    """Write ``line`` unbuffered where ``sys.stderr`` writes (never raises)."""
    with contextlib.suppress(OSError):
        os.write(_stderr_fd(), line)


def _flush_streams(timeout: float = 1.0) -> None:
    """Flush ``sys.stdout`` and ``sys.stderr``, waiting at most ``timeout`` seconds: from
    another thread, since the main thread may hold a stream's lock (inside a write, or
    blocked on a full pipe), where a flush from here would wait for ever or, in the main
    thread's own signal handler, raise a re-entrant call's RuntimeError."""
    def flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

    thread = threading.Thread(target=flush, daemon=True, name="bir_keras-flush")
    thread.start()
    thread.join(timeout)


def caused_by_interrupt(e: BaseException | None) -> bool:
    """Whether ``e`` is a Ctrl-C or was raised because of one.

    A SIGINT that lands while C code is calling back into Python (numpy's ``__array__`` in
    a tensor conversion, for example) surfaces as a ``SystemError`` ("returned a result with
    an exception set") whose context is the ``KeyboardInterrupt``; it is the same Ctrl-C."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def on_hard_stop(fn: Callable[[], object]) -> Callable[[], None]:
    """Run ``fn`` (quickly, from another thread) if a second Ctrl-C stops the process at
    once; returns a function that unregisters it."""
    _cleanups.append(fn)
    return lambda: _cleanups.remove(fn) if fn in _cleanups else None


def _hard_stop() -> None:
    for fn in list(_cleanups):
        with contextlib.suppress(Exception):
            fn()
    _flush_streams()
    _say(HARD_STOP_MESSAGE)
    os._exit(EXIT_INTERRUPTED)


def _watch(read_fd: int) -> None:
    """Count SIGINTs as their wake-up bytes arrive; the second stops the process."""
    seen = 0
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        seen += data.count(bytes([signal.SIGINT]))
        if seen >= 2:
            _hard_stop()


@contextlib.contextmanager
def deferred():
    """Within the block, the first Ctrl-C is held until ``raise_if_requested()``; a Ctrl-C
    still held when the block ends is raised there; a second one stops the process at once
    (exit 130). Only Python's own SIGINT handler is replaced: a process that ignores SIGINT,
    or whose caller installed its own handler, or code off the main thread, keeps what it
    had."""
    global _requested
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    _requested = False
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(read_fd,), daemon=True,
                               name="bir_keras-ctrl-c")
    watcher.start()
    signal.signal(signal.SIGINT, _handler)
    try:
        yield
        raise_if_requested()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.set_wakeup_fd(old_wakeup)
        os.close(write_fd)   # the watcher reads end-of-file and ends
        watcher.join(timeout=1)
        os.close(read_fd)
        _requested = False


def raise_if_requested() -> None:
    """Raise ``KeyboardInterrupt`` here if Ctrl-C was pressed since ``deferred()`` began."""
    global _requested
    if _requested:
        _requested = False
        raise KeyboardInterrupt
