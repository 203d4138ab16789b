"""bir_keras.interrupts: Ctrl-C held until the training loop asks for it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bir_keras import interrupts
from tests import processes

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
    with processes.running(["-c", HELD_IN_C]) as proc:
        assert proc.stdout.readline().strip() == "ready"
        start = time.time()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert proc.poll() is None  # the first one waits for the call
        out, err = processes.ctrl_c(proc, timeout=10)
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


def _env_without_unbuffered() -> dict:
    # as a user's shell has it: stdout to a file or pipe is block-buffered
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return {**env, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
            "CUDA_VISIBLE_DEVICES": ""}


FILTERED_AND_BUFFERED = """
import ctypes, signal, sys
from apps.common import quiet_tensorflow
quiet_tensorflow()   # descriptor 2 goes through the apps' log filter, as in every app
from bir_keras import interrupts
print("printed before the Ctrl-Cs")   # still in stdout's buffer (a file)
with interrupts.deferred():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})   # inside a long C call
    open(sys.argv[1], "w").close()
    ctypes.CDLL(None).sleep(20)
"""


@pytest.mark.parametrize("attempt", range(3))
def test_second_ctrl_c_line_and_buffered_output_reach_files(tmp_path, attempt):
    # the hard stop ends the process with os._exit: what stdout's buffer held and the line
    # written behind the apps' stderr filter were lost when both went to files
    ready = tmp_path / "ready"
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        with processes.running(["-c", FILTERED_AND_BUFFERED, str(ready)],
                               env=_env_without_unbuffered(), stdout=out, stderr=err) as proc:
            processes.wait_until(proc, ready.exists, time.time() + 60, "the C call",
                                 every=0.05)
            processes.ctrl_c(proc, times=2, gap=0.2, timeout=10)
    assert proc.returncode == interrupts.EXIT_INTERRUPTED, (tmp_path / "err").read_text()
    assert (tmp_path / "out").read_text() == "printed before the Ctrl-Cs\n"
    assert (tmp_path / "err").read_text().splitlines() == [
        interrupts.HARD_STOP_MESSAGE.decode().strip()]


# a whole apps.train (about 12 s); the mechanism (the stderr filter's pipe, a process in a C
# call, output to files) is tested above without TensorFlow
@pytest.mark.slow
def test_apps_train_second_ctrl_c_line_reaches_a_file(tmp_path):
    from tests.apps.test_train_app import FAST

    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        with processes.running(
                ["-m", "apps.train", *FAST, "--method=bir", "--tasks=2", "--iters=100000",
                 "--progress_every=0.2", f"--output_dir={tmp_path / 'out'}",
                 f"--export_dir={tmp_path / 'export'}"],
                env=_env_without_unbuffered(), stderr=err) as proc:
            # a progress line: the training loop (inside interrupts.deferred) is running
            processes.wait_for_line(proc, "task 1/2: iteration")
            processes.ctrl_c(proc, times=2, gap=0.05, timeout=30)
    text = err_path.read_text()
    assert proc.returncode == interrupts.EXIT_INTERRUPTED, text[-2000:]
    assert "Ctrl-C again: stopped at once" in text and "Traceback" not in text
