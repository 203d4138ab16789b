"""bir_keras.interrupts: Ctrl-C held until the training loop asks for it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bir_keras import interrupts

ROOT = Path(__file__).resolve().parents[1]


def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)


def test_first_ctrl_c_is_held_until_asked_for(capfd):
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            ctrl_c()  # nothing raised here
            reached = True
            interrupts.raise_if_requested()
            reached_after = True
    assert reached and "reached_after" not in locals()
    assert "press again to stop at once" in capfd.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


HELD_IN_C = """
import ctypes, signal, sys, time
from bir_keras import interrupts
with interrupts.deferred():
    # the main thread blocks in C with SIGINT masked, as inside a long compiled call: no
    # Python handler can run there until it returns (20 s)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    print("ready", flush=True)
    ctypes.CDLL(None).sleep(20)
print("the call returned", flush=True)
"""


def test_second_ctrl_c_stops_at_once_even_inside_a_c_call():
    proc = subprocess.Popen([sys.executable, "-c", HELD_IN_C], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "ready"
        start = time.time()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert proc.poll() is None  # the first one waits for the call
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == interrupts.EXIT_INTERRUPTED, err
    assert time.time() - start < 8 and "the call returned" not in out
    assert "Ctrl-C again: stopped at once" in err and "Traceback" not in err


def test_hard_stop_runs_the_cleanups(tmp_path):
    script = (f"import os, signal\nfrom bir_keras import interrupts\n"
              f"interrupts.on_hard_stop(lambda: open({str(tmp_path / 'cleaned')!r}, 'w'))\n"
              "with interrupts.deferred():\n"
              "    os.kill(os.getpid(), signal.SIGINT); os.kill(os.getpid(), signal.SIGINT)\n"
              "    import time; time.sleep(10)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=ROOT, timeout=30)
    assert r.returncode == 130 and (tmp_path / "cleaned").exists(), r.stderr


def test_ctrl_c_still_held_at_the_end_is_raised_there():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            ctrl_c()
            done.append(1)
    assert done == [1]
    # nothing is left pending for later blocks
    with interrupts.deferred():
        interrupts.raise_if_requested()


def test_no_ctrl_c_no_interrupt():
    with interrupts.deferred():
        interrupts.raise_if_requested()
    interrupts.raise_if_requested()


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.deferred():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            ctrl_c()
            interrupts.raise_if_requested()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
