"""The command-line programs: thin absl apps over the ``bir_keras`` library.

A Ctrl-C while a program is still starting (importing its modules, before its ``main``
runs) ends it at once with exit 130 and one line, instead of a ``KeyboardInterrupt``
traceback; ``apps.common.run_app`` hands Ctrl-C back to Python when ``main`` starts, and
each program then says what it saved. Only under ``python -m apps.<program>`` (where
``sys.argv[0]`` is ``-m`` while the package loads), never when a test or a notebook imports
the package."""

import os
import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:
    try:
        os.write(2, b"interrupted while starting, nothing done\n")
    finally:
        os._exit(130)


if sys.argv[:1] == ["-m"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_starting)
