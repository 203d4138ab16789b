"""bir_keras.interrupts: Ctrl-C held until the training loop asks for it."""

import os
import signal

import pytest

from bir_keras import interrupts


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


def test_second_ctrl_c_raises_at_once():
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            ctrl_c()
            ctrl_c()
            pytest.fail("the second Ctrl-C did not raise")  # pragma: no cover


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
