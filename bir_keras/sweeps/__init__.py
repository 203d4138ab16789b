"""Sweeps: methods x sweep values x seeds, each run an ``apps.train`` process, cached by a
stamp of its settings, tabulated and plotted; the library under ``apps.compare``, callable
from Python (it never reads flags)::

    from bir_keras import sweeps

    sweep = sweeps.prepare(["none", "bir"], [0, 1], "split_digits", "class",
                           "results/digits", ["--iters=30", "--tasks=2"], report=print)
    outcome = sweep.run()          # runs what is not cached, then table.md, table.csv, plots
    outcome.stats["bir"]["mean"]   # final average accuracy (%), mean over the seeds

- ``planning``: ``Run`` (one per method, sweep value and seed: its apps.train arguments, its
  stamp, its run directory), ``stamp``, ``pack_size`` and ``groups_of`` (seeds of one
  setting trained together, ``--seeds_at_once``);
- ``cache``: the compare folder (its marker, what it may hold: ``check_output_dir``,
  ``Folder``), ``is_cached``, moving each seed of a finished pack into its run directory;
- ``runner``: the ``Program`` a run executes and where: ``LocalPool`` (processes on this
  machine) or ``RayCluster`` (Ray tasks on a cluster; ``pip install 'bir_keras[ray]'``);
- ``tables``: ``summarise`` (mean and standard error over seeds), ``write_tables``
  (``table.md``, ``table.csv``, beside the paper's ``PUBLISHED`` numbers), ``write_plots``
  (``accuracy.png``, ``sweep.png``);
- ``sweep``: ``prepare`` (plan and check everything before any run) and ``Sweep.run``.

Without ``program=Program(check=...)`` the runs are not checked before they start (each
refuses its own bad settings and fails); ``apps.compare`` passes ``apps.train``'s checks.
``bk.compare`` is the other way: in this process, one run after another, no cache.
"""

from bir_keras.sweeps.cache import Folder, check_output_dir, is_cached, unexpected_entries
from bir_keras.sweeps.planning import (
    Run,
    changed_settings,
    groups_of,
    name_part,
    pack_size,
    plan,
    stamp,
)
from bir_keras.sweeps.runner import LocalPool, Program, RayCluster
from bir_keras.sweeps.sweep import NoRunFinished, Outcome, Sweep, check_runs, prepare, refusal
from bir_keras.sweeps.tables import (
    PUBLISHED,
    summarise,
    summarise_runs,
    table_texts,
    write_plots,
    write_tables,
)

__all__ = ["PUBLISHED", "Folder", "LocalPool", "NoRunFinished", "Outcome", "Program",
           "RayCluster", "Run", "Sweep", "changed_settings", "check_output_dir", "check_runs",
           "groups_of", "is_cached", "name_part", "pack_size", "plan", "prepare", "refusal",
           "stamp", "summarise", "summarise_runs", "table_texts", "unexpected_entries",
           "write_plots", "write_tables"]
