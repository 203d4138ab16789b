"""Where a sweep's runs execute: each run (or pack of seeds) is one ``python -m apps.train``
process (``Program``), in its own process group, writing into its run directory of the
shared cache folder, its output in the run's ``log.txt``.

- ``LocalPool``: a pool of processes on this machine, ``parallel`` at once.
- ``RayCluster``: each run is a Ray task (``num_cpus=cpus_per_run``) that starts the same
  process on a node of a Ray cluster (``ray.init(address)``; the folder must be one file
  system for every node, as one machine's is). Ray is an optional extra
  (``pip install 'bir_keras[ray]'``), imported only here, only when asked for.

``Runner`` hands the groups of runs to either, one thread per run in flight, and passes a
Ctrl-C on to the runs in progress once (they save what they can; a further one stops them
at once); a run that finished is cached (``cache.finish``)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bir_keras.config import Config, ConfigError
from bir_keras.sweeps.cache import Folder, finish, pack_dir
from bir_keras.sweeps.planning import Run


@dataclasses.dataclass(frozen=True)
class Program:
    """The program each run executes, ``python -m <module> <run args> --output_dir=...
    --export_dir=... --overwrite [--seeds_at_once=K]``, and what the sweep knows of it:
    ``check(args, seeds)`` refuses (``ConfigError``, ``DataError``) the arguments the
    program would refuse (for ``seeds`` seeds at once) and returns the resolved ``Config``
    (None: the runs are not checked before they start; each refuses its own); ``seed_bytes``
    the memory one seed of a resolved setting needs (sizes the packs of seeds); ``path``
    folders put first on the run's ``PYTHONPATH``; ``env`` further environment variables."""

    module: str = "apps.train"
    check: Callable[[Sequence[str], int], Config] | None = None
    seed_bytes: Callable[[Config], float] | None = None
    path: tuple[str, ...] = ()
    env: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"TF_CPP_MIN_LOG_LEVEL": "3"})


def command(program: Program, group: list[Run], where: Path) -> list[str]:
    """The arguments after ``python`` that run ``group`` (one run, or a pack of consecutive
    seeds) into ``where`` (``where/out``, ``where/export``)."""
    return ["-m", program.module, *group[0].args, f"--output_dir={where / 'out'}",
            f"--export_dir={where / 'export'}", "--overwrite",
            *([f"--seeds_at_once={len(group)}"] if len(group) > 1 else [])]


def _environment(program: Program) -> dict[str, str]:
    """This process's environment with the program's (evaluated where the run starts)."""
    path = [*program.path, os.environ.get("PYTHONPATH", "")]
    return {**os.environ, **program.env, "PYTHONPATH": os.pathsep.join(filter(None, path))}


def _as_a_terminal_starts_it() -> None:
    """``preexec_fn``: SIGINT handled by default and not blocked, whatever the starting
    process did with it (a Ray worker blocks it; a mask is inherited across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def start(args: list[str], program: Program, log_path: Path) -> subprocess.Popen:
    """Start ``python args`` in a process group of its own (a terminal's Ctrl-C reaches the
    sweep alone, which passes it on once), its output into ``log_path``."""
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                env=_environment(program), stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_as_a_terminal_starts_it)


def run_process(args: list[str], program: Program, log_path: str) -> int:
    """A Ray task's body: ``start`` the run and wait for it; a cancel of the task (Ray raises
    ``KeyboardInterrupt`` here) is passed on to the run as SIGINT, and the run is waited for,
    so that it saves what it can. Returns its exit code."""
    proc = start(args, program, Path(log_path))
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGINT)


class LocalPool:
    """Runs on this machine, ``parallel`` at once."""

    def __init__(self, parallel: int):
        self.parallel = parallel

    def submit(self, args: list[str], program: Program, log_path: Path) -> subprocess.Popen:
        return start(args, program, log_path)

    def wait(self, handle: subprocess.Popen, log_path: Path) -> int:
        return handle.wait()

    def interrupt(self, handle: subprocess.Popen) -> None:
        with contextlib.suppress(OSError):
            handle.send_signal(signal.SIGINT)

    def close(self) -> None:
        pass


def ray_module():
    """Ray, imported; ``ConfigError`` where it is not installed."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(f"Ray is not installed ({e}): pip install 'bir_keras[ray]' (or "
                          "pip install ray), or leave out --ray_address to run on this "
                          "machine") from None
    return ray


class RayCluster:
    """Runs as Ray tasks on the cluster at ``address`` (``auto``: the one ``ray start``
    started on this machine; ``host:port``; ``local``: a new one on this machine, for this
    sweep), each asking for ``cpus_per_run`` CPUs; ``parallel`` in flight at once (0: as
    many as there are runs, the cluster queueing what its CPUs cannot take yet). Raises
    ``ConfigError`` where Ray is not installed or the cluster cannot be reached."""

    def __init__(self, address: str, cpus_per_run: float = 2, parallel: int = 0):
        ray = self.ray = ray_module()
        import logging

        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                     include_dashboard=False, configure_logging=True)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"--ray_address={address}: cannot connect to a Ray cluster "
                              f"({' '.join(str(e).split())[:300]})") from None
        self.parallel = parallel
        self.task = ray.remote(num_cpus=cpus_per_run, max_retries=0)(run_process)

    def submit(self, args: list[str], program: Program, log_path: Path):
        # (the task needs what starts the run, not the checks, which stay with the sweep)
        bare = dataclasses.replace(program, check=None, seed_bytes=None)
        return self.task.remote(args, bare, str(log_path))

    def wait(self, handle, log_path: Path) -> int | None:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.TaskCancelledError:
            return None   # cancelled before it started
        except self.ray.exceptions.RayError as e:
            # the task, its worker or its node failed: the run did not finish
            with contextlib.suppress(OSError), open(log_path, "a") as log:
                log.write(f"error: the Ray task failed: {' '.join(str(e).split())[:500]}\n")
            return 1

    def interrupt(self, handle) -> None:
        self.ray.cancel(handle)

    def close(self) -> None:
        self.ray.shutdown()


class Runner:
    """Runs the groups of runs through ``executor`` (``LocalPool``, ``RayCluster``) into
    the compare folder ``folder``: each group's directory and log are marked as the
    compare's before it starts, and a group that ended well is cached (``cache.finish``)."""

    def __init__(self, folder: Folder, program: Program, executor):
        self.folder = folder
        self.program = program
        self.executor = executor
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.active = 0   # groups being executed (their process, then their stamp and marker)
        self.live: dict[int, tuple[list[Run], object]] = {}
        self.stopping = False
        self.stopped: list[Run] = []   # in progress when Ctrl-C came

    def execute(self, group: list[Run]) -> tuple[list[Run], int | None, str]:
        """Run one group; (the group, its exit code or None where it did not start: Ctrl-C
        came first, the log's path)."""
        with self.lock:
            self.active += 1
        try:
            return self._execute(group)
        finally:
            with self.lock:
                self.active -= 1
                self.idle.notify_all()

    def _execute(self, group: list[Run]) -> tuple[list[Run], int | None, str]:
        d = pack_dir(group)
        log_path = d / "log.txt"
        with self.lock:
            if self.stopping:
                return group, None, str(log_path)
        d.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
        self.folder.mark()  # the new run directory and its log are the compare's
        with self.lock:
            if self.stopping:
                return group, None, str(log_path)
            handle = self.executor.submit(command(self.program, group, d), self.program,
                                          log_path)
            self.live[id(handle)] = (group, handle)
        try:
            rc = self.executor.wait(handle, log_path)
        finally:
            with self.lock:
                self.live.pop(id(handle), None)
        if rc is None:   # a queued task cancelled by Ctrl-C: it never started
            with self.lock:
                self.stopped = [r for r in self.stopped if r not in group]
            with contextlib.suppress(OSError):
                log_path.unlink()
                d.rmdir()   # (where nothing of an earlier run is in it)
            self.folder.mark()
            return group, None, str(log_path)
        if rc == 0:
            log_path = finish(group)
        self.folder.mark()
        return group, rc, str(log_path)

    def interrupt(self) -> None:
        """Ctrl-C: start nothing more; pass the interrupt to the runs in progress."""
        with self.lock:
            self.stopping = True
            live = list(self.live.values())
        for group, handle in live:
            self.stopped += [r for r in group if r not in self.stopped]
            self.executor.interrupt(handle)

    def wait_live(self) -> None:
        """Wait for the runs being executed to end (a further Ctrl-C is passed on:
        apps.train then stops at once)."""
        while True:
            try:
                with self.lock:
                    while self.active:
                        self.idle.wait(0.2)
                return
            except KeyboardInterrupt:
                self.interrupt()
