"""A sweep from plan to tables: ``prepare`` plans the runs and checks everything before
any run starts (each setting as the program would, the folder, the title, the cluster);
``Sweep.run`` holds the folder, runs what is not cached, then writes the tables and
plots; a Ctrl-C stops the runs in progress and ``Sweep.interrupted_line`` says what it
left."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from bir_keras import rundirs
from bir_keras.config import MAX_SEEDS_AT_ONCE, ConfigError
from bir_keras.data.sources import DataError
from bir_keras.interrupts import caused_by_interrupt
from bir_keras.sweeps.cache import (
    Folder,
    check_output_dir,
    check_output_path,
    is_cached,
    unexpected_entries,
)
from bir_keras.sweeps.planning import Run, changed_settings, groups_of, pack_size, plan, shown
from bir_keras.sweeps.runner import LocalPool, Program, RayCluster, Runner, ray_module
from bir_keras.sweeps.tables import check_title, summarise_runs, write_plots, write_tables

MAX_IN_FLIGHT = 256     # runs at once


class NoRunFinished(RuntimeError):
    """No run of the sweep finished (``apps.compare``: exit 1)."""


@dataclasses.dataclass
class Outcome:
    """What ``Sweep.run`` did: the finished (cached) runs, those that failed, the
    statistics per setting (``tables.summarise``) and the tables and plots written."""

    done: list[Run]
    failed: list[Run]
    stats: dict[str, dict]
    written: list[Path]


def refusal(run: Run, e: Exception, program: Program) -> str:
    """Why the program would refuse a planned run: its sweep value where that alone makes
    the difference (the run without it would be accepted), else its settings."""
    if run.value is not None:
        swept = run.args[-1]   # --<flag>=<value>, last: it wins over a passed-through one
        try:
            program.check(list(run.args[:-1]), 1)
        except (ConfigError, DataError):
            pass
        else:
            return (f"--sweep value {swept}: {run.method} seed {run.seed} with it would be "
                    f"refused by {program.module}: {e}")
    return f"{run.name} ({' '.join(run.args[2:])}) would be refused by {program.module}: {e}"


def check_runs(runs: Sequence[Run], program: Program, seeds_at_once: int | None, seeds: int,
               workers: int) -> dict[str, int]:
    """Check each planned setting as ``program`` would (one ``ConfigError`` naming the run
    or the sweep value, ``refusal``) and how many of its seeds one process packs (with
    ``seeds_at_once`` or by default: ``planning.pack_size``; a pack's memory checked too);
    returns the pack size per setting ``key``. Without ``program.check`` nothing is
    checked and seeds are packed only as ``seeds_at_once`` asks."""
    sizes: dict[str, int] = {}
    for r in runs:  # the seed (checked by the plan) does not change what else is accepted
        if r.key in sizes:
            continue
        if program.check is None:
            sizes[r.key] = max(1, min(seeds_at_once or 1, seeds, MAX_SEEDS_AT_ONCE))
            continue
        try:
            c = program.check(list(r.args), 1)
            need = program.seed_bytes(c) if program.seed_bytes else None
            sizes[r.key] = pack_size(c, seeds_at_once, seeds, workers, need)
            if sizes[r.key] > 1:
                program.check(list(r.args), min(sizes[r.key], seeds))
        except (ConfigError, DataError) as e:
            raise ConfigError(refusal(r, e, program)) from None
    return sizes


def prepare(methods: Sequence[str], seeds: Sequence[int], experiment: str, scenario: str,
            output_dir: str | os.PathLike, args: Sequence[str] = (), *,
            sweep: tuple[str, Sequence] | None = None, program: Program | None = None,
            seeds_at_once: int | None = None, parallel: int = 0,
            ray_address: str | None = None, cpus_per_run: float = 2,
            title: str | None = None, only_cached: bool = False,
            changed: Sequence[str] | None = None,
            report: Callable[[str], object] | None = None) -> Sweep:
    """Plan ``methods`` x sweep values x ``seeds`` (``planning.plan``; ``args``: further
    apps.train arguments, ``--name=value``) into ``output_dir`` and check everything before
    any run: the folder's path and what it holds (``cache.check_output_dir``), the title,
    every setting (``check_runs``, with ``program.check``), the Ray cluster. Runs execute
    ``parallel`` at once on this machine (0: cores // 2, at least 1), or as Ray tasks on
    the cluster at ``ray_address`` (connected only if a run is to be done).
    ``changed``: what the tables say differs from the paper's settings (default:
    ``planning.changed_settings`` of ``args`` and the sweep). ``report(line)`` gets the
    progress lines (None: silent). Raises ``ConfigError`` (and
    ``rundirs.PathRefused``, ``DataError``) for what it refuses; nothing is written."""
    program = program or Program()
    root = Path(os.path.abspath(output_dir))
    check_output_path(root)
    check_title(title)
    runs = plan(methods, seeds, experiment, scenario, args, root, sweep)
    workers = parallel or max(1, (os.cpu_count() or 2) // 2)
    sizes = check_runs(runs, program, seeds_at_once, len(seeds), workers)
    check_output_dir(root)
    if ray_address is not None:
        ray_module()   # refused where Ray is not installed, even with nothing to run
    if ray_address is None or only_cached or all(map(is_cached, runs)):
        executor = LocalPool(workers)
    else:
        executor = RayCluster(ray_address, cpus_per_run, parallel)
    swept = None if sweep is None else (sweep[0], [shown(v) for v in sweep[1]])
    if changed is None:
        changed = changed_settings(args, swept and f"{swept[0]}:{','.join(swept[1])}")
    return Sweep(root, runs, experiment=experiment, scenario=scenario, program=program,
                 sizes=sizes, executor=executor, title=title, sweep=swept, changed=changed,
                 only_cached=only_cached, report=report)


class Sweep:
    """Planned runs in their compare folder ``root`` (see ``prepare``), with the pack size
    of each setting (``sizes``), the ``executor`` that runs them (``runner.LocalPool``,
    ``runner.RayCluster``; closed when ``run`` ends), and what the tables say (the
    experiment and scenario, for the published numbers; ``changed``: what differs from the
    paper's settings; the plots' ``title``; ``sweep``: the swept flag and its values)."""

    def __init__(self, root: Path, runs: list[Run], *, experiment: str, scenario: str,
                 program: Program | None = None, sizes: dict[str, int] | None = None,
                 executor=None, changed: Sequence[str] = (), title: str | None = None,
                 sweep: tuple[str, Sequence[str]] | None = None, only_cached: bool = False,
                 report: Callable[[str], object] | None = None):
        self.root, self.runs = Path(root), runs
        self.experiment, self.scenario = experiment, scenario
        self.program = program or Program()
        self.sizes = sizes or {}
        self.executor = executor or LocalPool(1)
        self.changed, self.title, self.sweep = list(changed), title, sweep
        self.only_cached = only_cached
        self.report = report or (lambda line: None)
        self.runner: Runner | None = None
        self._stopped = False

    def run(self) -> Outcome:
        """Hold the folder (``rundirs.claim``: one compare per folder), run what is not
        cached (every method's first seed, or pack of seeds, before any method's second),
        then write the tables and plots of the finished runs. Raises ``NoRunFinished``
        where none finished, ``rundirs.PathRefused`` where files that are not the
        compare's appeared (no table is written then), ``KeyboardInterrupt`` on Ctrl-C
        (after stopping the runs in progress)."""
        try:
            with rundirs.claim(self.root, "--output_dir"):
                check_output_dir(self.root)
                try:
                    self.root.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise rundirs.PathRefused(f"--output_dir={self.root}: cannot create it "
                                              f"({e.strerror or e})") from None
                folder = Folder(self.root)
                folder.mark()
                try:
                    return self._run(folder)
                except BaseException as e:
                    if caused_by_interrupt(e):
                        self.stop()  # while the folder is still held
                    raise
        finally:
            self.executor.close()

    def _run(self, folder: Folder) -> Outcome:
        runs, say = self.runs, self.report
        todo = [] if self.only_cached else [r for r in runs if not is_cached(r)]
        groups = groups_of(todo, self.sizes)
        packed = sum(len(g) for g in groups if len(g) > 1)
        say(f"{sum(map(is_cached, runs))} cached, {len(todo)} to run"
            + (f" ({packed} of them in {sum(len(g) > 1 for g in groups)} pack(s) of seeds)"
               if packed else ""))
        runner = self.runner = Runner(folder, self.program, self.executor)
        failed = []
        at_once = self.executor.parallel or min(max(len(groups), 1), MAX_IN_FLIGHT)
        pool = cf.ThreadPoolExecutor(at_once)
        try:
            for group, rc, log in pool.map(runner.execute, groups):
                for run in group:
                    if rc == 0:
                        say(f"{run.name}: ok")
                    else:
                        err = last_error(log)
                        say(f"{run.name}: FAILED (exit {rc}{': ' + err if err else ''}; "
                            f"log {log})")
                        failed.append(run)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        done = [r for r in runs if is_cached(r)]
        folder.mark()
        if not done:
            raise NoRunFinished("no run finished")
        stats = summarise_runs(done)
        others = unexpected_entries(self.root)
        if others:
            raise rundirs.PathRefused(
                f"--output_dir={self.root}: files apps.compare did not write appeared while it "
                f"ran ({', '.join(others[:5])}); no table was written (the finished runs are "
                f"cached in {self.root / 'runs'}): move them away and run the same command "
                "again")
        say(write_tables(stats, self.experiment, self.scenario, self.root, self.changed,
                         write=folder.write))
        written = [self.root / "table.md", self.root / "table.csv"]
        title = self.title or f"{self.experiment} ({self.scenario}-IL)"
        methods = list(dict.fromkeys(r.method for r in runs))
        plots, note = write_plots(stats, self.root, title, methods, self.sweep,
                                  write=folder.write)
        if note:
            say(note)
        folder.mark()
        written += plots
        say(f"wrote {', '.join(str(p) for p in written)} (runs in {self.root / 'runs'})")
        return Outcome(done, failed, stats, written)

    def stop(self) -> None:
        """After Ctrl-C: pass it on to the runs in progress, wait for them, mark the folder
        (once)."""
        if self.runner is None or self._stopped:
            return
        self.runner.interrupt()
        self.runner.wait_live()
        self.runner.folder.mark()
        self._stopped = True

    def interrupted_line(self) -> str:
        """One line: what is cached, what was stopped, what did not start."""
        if self.runner is None:
            return "interrupted before any run started"
        runs = self.runs
        cached = [r for r in runs if is_cached(r)]
        stopped = [r for r in self.runner.stopped if not is_cached(r)]
        rest = len(runs) - len(cached) - len(stopped)
        return (f"interrupted: {len(cached)} of {len(runs)} run(s) finished and are cached in "
                f"{self.root / 'runs'} (the same command again skips them); "
                + (f"stopped before finishing, not cached: "
                   f"{', '.join(r.name for r in stopped)}; "
                   if stopped else "no run was in progress; ")
                + f"{rest} not started")


def last_error(log: str) -> str:
    """The last ``error:`` line of a run's log, if any."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    return errors[-1] if errors else ""
