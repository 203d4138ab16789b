r"""Compare methods over seeds: the paper's figures as one command.

    python -m apps.compare --experiment=split_mnist --scenario=class \
        --methods=none,joint,ewc,online_ewc,si,lwf,generative,generative_distill,bir,bir_si \
        --seeds=3 --output_dir=results/fig3_class --data_dir=DIR

A thin app over ``bir_keras.sweeps`` (plan, stamps and cache, runs, tables and plots):
it reads the flags, checks them, and hands the library the runs' ``apps.train``
arguments and ``apps.train``'s own checks (``check_run``).

Every apps.train flag (``--iters``, ``--data_dir``, ...) passes through to apps.train; each is
checked as apps.train checks it, and every planned run's settings as a whole, before any run
starts. Each run is cached under ``output_dir/runs/`` by a stamp of its settings and of what
its ``--data_dir`` and ``--conv_weights`` name (``sweeps.planning.stamp``): a repeated compare
runs only what is new or changed (flags that only change how a run reports or
checkpoints, ``--checkpoint_every``, ``--progress_every``, do not change the stamp). Writes
``table.md``, ``table.csv`` and ``accuracy.png`` (average accuracy against the number of
tasks, mean and standard-error band), and ``sweep.png`` with ``--sweep``.

Runs are processes on this machine (``--parallel`` at once), or Ray tasks on a Ray cluster
with ``--ray_address`` (``pip install 'bir_keras[ray]'``; the output folder must be one file
system for every node): the same runs, the same cache.

``--seeds_at_once=K`` trains up to K seeds of one method (consecutive uncached seeds) in
one apps.train process and one vectorised step (apps.train ``--seeds_at_once``), then moves
each seed's output and export into its own run directory, cached as that seed's run: a
packed seed's numbers are those of its ``--nojit_compile`` run alone up to float rounding
(README, "Several seeds at once"). The default packs as many seeds as fit in memory, and
runs alone the settings that cannot be packed.

``--output_dir`` is apps.compare's own folder, marked by a ``.bir_keras`` marker (kind
``compare``) that lists what it holds: a new or empty folder becomes one; an existing folder
without that marker, or holding anything else, is refused before any run starts (nothing in
it is ever replaced), and a compare holds it for as long as it works (a second compare on it
is refused).

Exit codes: 0 done, 1 a run failed or none finished (the tables show those that did),
2 refused input (one ``error:`` line, no run started), 130 Ctrl-C (the finished runs stay
cached; the runs in progress are stopped and are not).
"""

from __future__ import annotations

import copy
from pathlib import Path

from absl import flags

from apps import common
from apps import train as _train  # noqa: F401 - defines apps.train's flags, which pass through
from bir_keras import memory, sweeps
from bir_keras.config import METHODS, ConfigError, resolve
from bir_keras.sweeps.planning import NOT_STAMPED, shown
from bir_keras.sweeps.sweep import MAX_IN_FLIGHT

FLAGS = flags.FLAGS
# apps.train flags that apps.compare sets for each run itself (given, they are refused)
SET_PER_RUN = {"method": "list methods in --methods", "seed": "use --seeds and --first_seed",
               "output_dir": "", "export_dir": "each run's directories are under "
               "--output_dir/runs/", "resume_from": "each run's directories are under "
               "--output_dir/runs/", "overwrite": "apps.compare replaces only its own runs"}
# apps.train's flags (defined by apps.common): checked here, passed through to each run
TRAIN_FLAGS = frozenset(f.name for f in FLAGS.flags_by_module_dict().get("apps.common", [])
                        if f.name != "tf_log")
# --help lists apps.train's flags too, but those that apps.compare sets itself
for _key_flag in sorted(TRAIN_FLAGS | {"tf_log"}):
    if _key_flag not in SET_PER_RUN or _key_flag == "output_dir":
        flags.declare_key_flag(_key_flag)
MAX_RUNS = 10_000       # runs one compare may plan (methods x sweep values x seeds)
MAX_PARALLEL = MAX_IN_FLIGHT
flags.DEFINE_list("methods", ["none", "joint"], f"methods to compare: {', '.join(METHODS)}")
flags.DEFINE_integer("seeds", 3, "number of seeds (first_seed, first_seed + 1, ...) per method "
                     f"(default 3; at most {MAX_RUNS:,} runs in all: methods x sweep values x "
                     "seeds)")
flags.DEFINE_integer("first_seed", 0, "first seed (default 0)")
flags.DEFINE_integer("parallel", 0, f"runs at once, 0 to {MAX_PARALLEL}; 0: cores // 2, at "
                     "least 1 (with --ray_address: as many as the cluster's CPUs take)")
flags.DEFINE_string("title", None, f"plot title, at most {sweeps.tables.MAX_TITLE} characters "
                    "(default: experiment and scenario)")
flags.DEFINE_bool("only_cached", False, "tabulate the finished runs, run nothing")
flags.DEFINE_string("sweep", None, "sweep an apps.train flag over values, e.g. "
                    "batch_replay:1,4,16,128 (Fig. 4) or g_fc_units:10,25,100,400")
flags.DEFINE_string("ray_address", None, "run each run as a task on this Ray cluster: auto "
                    "(the one `ray start` started here), HOST:PORT, or local (a new one on "
                    "this machine, for this compare); --output_dir must be shared by its "
                    "nodes. Needs pip install 'bir_keras[ray]' (default: processes on this "
                    "machine)")
flags.DEFINE_float("cpus_per_run", 2, "with --ray_address: the CPUs each run (or pack of "
                   "seeds) asks of the cluster (default 2)")
FLAGS["seeds_at_once"].help = ("seeds of one method trained together in one apps.train "
                                "process and step, at least 1 (more than --seeds packs them "
                                "all)")
# its default here is not apps.train's 1 (the flag is apps.train's: say what compare does)
FLAGS["seeds_at_once"].default_as_str = ("as many as fit in memory; 1 for the settings that "
                                         "cannot be packed")
FLAGS["output_dir"].help = ("apps.compare's folder (required): runs/, table.md, table.csv, "
                            "accuracy.png, sweep.png; a new or empty folder, or one an earlier "
                            "compare wrote (its runs are reused); anything else is refused")
common.validate("seeds", lambda v: v >= 1, "at least 1")
common.validate("first_seed", lambda v: 0 <= v < 2 ** 32, "in [0, 2^32)")
common.validate("parallel", lambda v: 0 <= v <= MAX_PARALLEL,
                f"in [0, {MAX_PARALLEL}] (0: cores // 2)")
common.validate("cpus_per_run", lambda v: 0 < v <= 1024, "in (0, 1024]")
flags.register_multi_flags_validator(
    ["first_seed", "seeds"], lambda d: d["first_seed"] + d["seeds"] <= 2 ** 32,
    message="--first_seed + --seeds must be at most 2^32 (seeds are in [0, 2^32))")


def train_flag_values(args: list[str]) -> flags.FlagValues:
    """apps.train's flags (copies with their defaults and validators) parsed from ``args``;
    raises ``flags.Error`` as apps.train would refuse them."""
    fv = flags.FlagValues()
    for name in TRAIN_FLAGS:
        f = copy.deepcopy(FLAGS[name])
        f.unparse()
        fv[name] = f
    fv(["apps.train", *args])
    return fv


def parse_sweep(spec: str | None) -> tuple[str, list[str]] | None:
    """``flag:v1,v2,...`` -> (flag, values as apps.train reads them); None -> None. Raises
    ``ConfigError`` for a flag apps.train does not have (or apps.compare sets, or one that
    cannot change a run's numbers), an empty value, a value that is not of the flag's type
    (a repeated value is refused by the plan, a value out of range with the planned run's
    settings, ``check_run``)."""
    if spec is None:
        return None
    if ":" not in spec:
        raise ConfigError(f"--sweep must look like flag:v1,v2 (got {spec!r})")
    name, values = spec.split(":", 1)
    name = name.strip().lstrip("-")
    if name not in TRAIN_FLAGS or name in SET_PER_RUN or name in NOT_STAMPED \
            or name in ("experiment", "scenario", "seeds_at_once"):
        why = ("it does not change a run's numbers" if name in NOT_STAMPED or name == "tf_log"
               else "it is set by apps.compare" if name in TRAIN_FLAGS
               else "no such apps.train flag")
        raise ConfigError(f"--sweep={spec}: cannot sweep --{name} ({why}); sweep an apps.train "
                          "flag such as batch_replay, g_fc_units, iters")
    out: list[str] = []
    for v in (v.strip() for v in values.split(",")):
        if not v:
            raise ConfigError(f"--sweep={spec}: an empty value (values are separated by "
                              "single commas)" if values.strip() else
                              f"--sweep={spec}: no values to sweep over")
        try:
            out.append(shown(train_flag_values([f"--{name}={v}"])[name].value))
        except flags.Error as e:
            raise ConfigError(f"--sweep={spec}: {v!r} is not a value of --{name} ({e})") from None
    return name, out


def check_run(args: list[str], seeds: int = 1):
    """Refuse (``ConfigError``, ``DataError``) a run's arguments that apps.train would
    refuse: a flag's value, incompatible settings, a protocol without that many tasks, a
    ``--data_dir`` or (with conv layers) ``--conv_weights`` that does not exist, your own
    data that the run could not cut into tasks, a run (of ``seeds`` seeds at once) that
    needs more memory than is available; else its resolved config."""
    try:
        fv = train_flag_values(args)
    except flags.Error as e:
        raise ConfigError(str(e)) from None
    config = common.config_from_flags(fv)
    c = resolve(config)                        # as apps.train: bir_keras.config.check
    common.check_data_dir(fv.data_dir)         # as apps.train, before any data loads
    common.check_conv_weights(c)
    common.check_stream(config, c)             # your own data: read and cut as the run will
    try:
        memory.check_memory(c, seeds)          # apps.train stops such a run before it loads
    except memory.NotEnoughMemory as e:
        more = f" or --seeds_at_once ({seeds} seeds at once)" if seeds > 1 else ""
        raise ConfigError(f"{e}{more}") from None
    return c


# apps.train, run from this checkout (or installation) of apps/, with its checks
PROGRAM = sweeps.Program(module="apps.train", check=check_run,
                         seed_bytes=lambda c: memory.memory_estimate(c)[0],
                         path=(str(Path(__file__).resolve().parent.parent),))


def main(argv: list[str]) -> int:
    """Check everything, run what is missing, then tabulate and plot.

    Exit codes (``common.run_work``): 0 done, 1 a run failed or none finished, 2 refused
    input, 130 Ctrl-C."""
    del argv
    state: dict = {"sweep": None}

    def interrupted(e: BaseException) -> str:
        sweep = state["sweep"]
        if sweep is None:
            return "interrupted before any run started"
        sweep.stop()  # (done already where the folder was held)
        return sweep.interrupted_line()

    return common.run_work(lambda: _main(state), interrupted=interrupted, one_line=True,
                           failed=(common.TrainingFailed, sweeps.NoRunFinished))


def passthrough_args() -> list[str]:
    """The apps.train flags given on the command line, as apps.train reads them."""
    return [FLAGS[n].serialize() for n in sorted(TRAIN_FLAGS)
            if FLAGS[n].present and n not in SET_PER_RUN
            and n not in ("experiment", "scenario", "seeds_at_once")]


def check_flags() -> sweeps.Sweep:
    """Everything the flags decide, before any run: the prepared sweep."""
    if not FLAGS.output_dir:
        raise ConfigError("--output_dir is required")
    for name, hint in SET_PER_RUN.items():
        if FLAGS[name].present and name != "output_dir":
            raise ConfigError(f"--{name} is set by apps.compare for each run; {hint}")
    common.check_data_dir(FLAGS.data_dir)
    if FLAGS.ray_address is not None and not FLAGS.ray_address.strip():
        raise ConfigError("--ray_address is empty: auto, HOST:PORT or local, or leave it out "
                          "to run on this machine")
    if FLAGS["cpus_per_run"].present and FLAGS.ray_address is None:
        raise ConfigError("--cpus_per_run is what each run asks of a Ray cluster: give it "
                          "with --ray_address")
    if FLAGS["sweep"].present > 1:
        raise ConfigError(f"--sweep is given {FLAGS['sweep'].present} times: apps.compare "
                          "sweeps one flag, --sweep=flag:v1,v2,...")
    size = 1 if FLAGS.sweep is None or ":" not in FLAGS.sweep else \
        FLAGS.sweep.split(":", 1)[1].count(",") + 1   # counted before the values are parsed
    count = len(FLAGS.methods) * size * FLAGS.seeds
    if count > MAX_RUNS:
        raise ConfigError(f"this compare would start {count:,} runs ({len(FLAGS.methods)} "
                          f"method(s) x {size:,} sweep value(s) x {FLAGS.seeds:,} seed(s)); at "
                          f"most {MAX_RUNS:,} are allowed: lower --seeds or the methods or "
                          "values")
    sweep = parse_sweep(FLAGS.sweep)
    if sweep and FLAGS[sweep[0]].present:
        raise ConfigError(f"{FLAGS[sweep[0]].serialize()} and --sweep={FLAGS.sweep} both set "
                          f"--{sweep[0]}: give it once")
    passthrough = passthrough_args()
    return sweeps.prepare(
        FLAGS.methods, range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds),
        FLAGS.experiment, FLAGS.scenario, FLAGS.output_dir, passthrough, sweep=sweep,
        program=PROGRAM, parallel=FLAGS.parallel, ray_address=FLAGS.ray_address,
        seeds_at_once=FLAGS.seeds_at_once if FLAGS["seeds_at_once"].present else None,
        cpus_per_run=FLAGS.cpus_per_run, title=FLAGS.title, only_cached=FLAGS.only_cached,
        changed=sweeps.changed_settings(passthrough, FLAGS.sweep),
        report=lambda line: print(line, flush=True))


def _main(state: dict) -> int:
    sweep = state["sweep"] = check_flags()
    outcome = sweep.run()
    return common.EXIT_FAILED if outcome.failed else common.EXIT_OK


if __name__ == "__main__":
    common.run_app(main)
