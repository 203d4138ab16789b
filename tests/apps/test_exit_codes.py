"""apps.common.run_work: how an app's work ended, as its exit code and one line (in-process,
no TensorFlow; each app's own lines are tested with the app)."""

import errno

import pytest

from apps import common
from bir_keras.config import ConfigError


class Refused(Exception):
    pass


class Failed(Exception):
    pass


def interrupted_in_c():
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise SystemError("returned a result with an exception set") from None


def raising(e: BaseException):
    def work():
        raise e
    return work


@pytest.mark.parametrize("work, kwargs, code, err", [
    (lambda: None, {}, common.EXIT_OK, ""),
    (lambda: common.EXIT_FAILED, {}, common.EXIT_FAILED, ""),
    (raising(ConfigError("bad  flag")), {}, common.EXIT_REFUSED, "error: bad  flag\n"),
    (raising(ConfigError("bad\n flag")), {"one_line": True}, common.EXIT_REFUSED,
     "error: bad flag\n"),
    (raising(Refused("no")), {"refused": (Refused,)}, common.EXIT_REFUSED, "error: no\n"),
    (raising(common.TrainingFailed("diverged")), {}, common.EXIT_FAILED, "error: diverged\n"),
    (raising(Failed("gone")), {"failed": (Failed,)}, common.EXIT_FAILED, "error: gone\n"),
    (raising(OSError(errno.ENOSPC, "No space left on device", "/x/f")), {"os_errors": True},
     common.EXIT_FAILED, "error: /x/f: No space left on device\n"),
    # a refusal that is an OSError (FileExistsError) is a refusal
    (raising(FileExistsError(errno.EEXIST, "File exists", "/x/f")), {"os_errors": True},
     common.EXIT_REFUSED, "error: [Errno 17] File exists: '/x/f'\n"),
    (raising(KeyboardInterrupt()), {}, common.EXIT_INTERRUPTED, "stopped\n"),
    (interrupted_in_c, {}, common.EXIT_INTERRUPTED, "stopped\n"),
])
def test_how_the_work_ended_is_its_exit_code(work, kwargs, code, err, capsys):
    assert common.run_work(work, interrupted="stopped", **kwargs) == code
    assert capsys.readouterr().err == err


def test_the_interrupted_line_sees_the_interrupt(capsys):
    def work():
        raise KeyboardInterrupt("saved in /x")

    assert common.run_work(work, interrupted=lambda e: str(e) or "nothing saved") == 130
    assert capsys.readouterr().err == "saved in /x\n"


@pytest.mark.parametrize("e", [ValueError("a bug"), OSError(errno.EIO, "I/O error"),
                               Refused("not this app's")])
def test_anything_else_propagates(e):
    # a bug is a traceback; an OSError only with os_errors; another app's refusal is not one
    with pytest.raises(type(e)):
        common.run_work(raising(e), interrupted="stopped")
