"""Flags shared by the apps, the mapping from flags to a ``Config``, and how every app
starts and ends: flags are parsed and checked before TensorFlow loads, TensorFlow's C++ log
lines stay hidden unless asked for, and ``run_work`` maps how an app's work ended to its
exit code (``EXIT_OK``; ``EXIT_REFUSED``, ``EXIT_FAILED``: one ``error:`` line;
``EXIT_INTERRUPTED``: the app's own line of what Ctrl-C left)."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import functools
import os
import re
import signal
import sys
import threading
from collections.abc import Callable

from absl import app, flags

from bir_keras.config import (
    DECLARATIONS,
    EXPERIMENT_DEFAULTS,
    METHOD_SETTINGS,
    METHODS,
    PRECISIONS,
    STRATEGIES,
    Config,
    ConfigError,
    check_method_flags,
    method_label,
    method_settings,
)
from bir_keras.data.sources import DataError
from bir_keras.interrupts import EXIT_INTERRUPTED, caused_by_interrupt
from bir_keras.memory import NotEnoughMemory
from bir_keras.xla_cache import CacheError

# refused input: one ``error:`` line, exit ``EXIT_REFUSED``
USER_ERRORS = (ConfigError, DataError, FileExistsError, CacheError)
# the apps' exit codes (``run_work``): done; work that started and could not finish; refused
# input; and (imported above) EXIT_INTERRUPTED, Ctrl-C: 130, as a shell reports SIGINT
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2


OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "file name too long",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "is a directory",
    errno.EIO: "input/output error (a failing disk or network file system)",
}


def os_error_text(e: OSError) -> str:
    """What an ``OSError`` is, in words (``OS_ERRORS``, else its own message), with the path
    it names if any."""
    what = OS_ERRORS.get(e.errno) or e.strerror or str(e)
    path = e.filename if e.filename is not None else None
    return f"{path}: {what}" if path else what


class TrainingFailed(RuntimeError):
    """Work that started and could not finish (a diverged loss, out of memory): exit 1 with
    one ``error:`` line."""


Errors = tuple[type[BaseException], ...]


def run_work(work: Callable[[], int | None], *,
             interrupted: str | Callable[[BaseException], str],
             refused: Errors = USER_ERRORS, failed: Errors = (TrainingFailed, NotEnoughMemory),
             os_errors: bool = False, one_line: bool = False) -> int:
    """Run an app's work, ``work()``, and return its exit code: what ``work`` returns
    (``EXIT_OK`` for None), else, by what it raised, in this order:

    - ``refused`` (refused input): ``error: <message>`` on stderr, ``EXIT_REFUSED``;
    - ``failed`` (work that started and could not finish): ``error: <message>``,
      ``EXIT_FAILED``;
    - with ``os_errors``, any other ``OSError`` (a file that failed during the work):
      ``error: <path>: <reason>``, ``EXIT_FAILED``;
    - Ctrl-C (``KeyboardInterrupt``, or an error raised because of one:
      ``caused_by_interrupt``): the line ``interrupted`` (or ``interrupted(e)``: what was
      saved), ``EXIT_INTERRUPTED``;
    - anything else propagates (a traceback: a bug).

    ``one_line``: the message's runs of whitespace (newlines too) as single spaces."""
    try:
        code = work()
    except BaseException as e:
        if isinstance(e, refused):
            code, text = EXIT_REFUSED, str(e)
        elif isinstance(e, failed):
            code, text = EXIT_FAILED, str(e)
        elif os_errors and isinstance(e, OSError):
            where = f"{e.filename}: " if e.filename else ""
            code, text = EXIT_FAILED, f"{where}{e.strerror or e}"
        elif caused_by_interrupt(e):
            line = interrupted if isinstance(interrupted, str) else interrupted(e)
            print(line, file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        else:
            raise
        if one_line:
            text = " ".join(text.split())
        print(f"error: {text}", file=sys.stderr, flush=True)
        return code
    return EXIT_OK if code is None else code


# what TensorFlow's own file system says when it cannot write (it reports a full disk as
# RESOURCE_EXHAUSTED, the code of an out-of-memory error too)
TF_OS_MESSAGES = {
    "No space left on device": OS_ERRORS[errno.ENOSPC],
    "Disk quota exceeded": OS_ERRORS[errno.EDQUOT],
    "File name too long": OS_ERRORS[errno.ENAMETOOLONG],
    "Read-only file system": OS_ERRORS[errno.EROFS],
    "Permission denied": OS_ERRORS[errno.EACCES],
}


@contextlib.contextmanager
def out_of_memory_names(hint: str):
    """Name what ran out or failed during the work, as ``TrainingFailed`` (exit 1, one
    line): out of memory (TensorFlow's ``ResourceExhaustedError``, ``MemoryError``) names
    what to lower; a file that could not be written (Python's ``OSError``, or TensorFlow's
    file errors, which report a full disk as resource exhausted too) names the path and
    the reason (no space left, name too long, permission denied, read-only file system),
    never memory."""
    try:
        yield
    except MemoryError:
        raise TrainingFailed(f"out of memory: lower {hint}") from None
    except OSError as e:
        raise TrainingFailed(f"cannot write or read {os_error_text(e)}") from None
    except Exception as e:  # noqa: BLE001 - only TensorFlow's resource and file errors are mapped
        tf = sys.modules.get("tensorflow")
        if tf is None or not isinstance(e, tf.errors.OpError):
            raise
        message = str(getattr(e, "message", "") or e)
        for text, what in TF_OS_MESSAGES.items():
            if text in message:
                raise TrainingFailed(f"cannot write: {what} ({one_line(message)})") from None
        if isinstance(e, tf.errors.ResourceExhaustedError):
            raise TrainingFailed(f"out of memory: lower {hint}") from None
        raise


def one_line(text: str, most: int = 300) -> str:
    """``text`` on one line, cut to ``most`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= most else text[:most - 3] + "..."


flags.DEFINE_bool("tf_log", False, "show TensorFlow's own (C++) log lines, hidden by default; "
                  "setting TF_CPP_MIN_LOG_LEVEL in the environment does the same (default false)")

HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?", "h")


def refuse(message: str) -> None:
    """Print one ``error:`` line and exit with code 2 (refused input)."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(EXIT_REFUSED)


def _flagfile_of(arg: str, argv: list[str]) -> str | None:
    """The flagfile (named in ``argv``, recursively) that holds the line ``arg``, if any."""
    seen: set[str] = set()
    todo = [a.split("=", 1)[1] for a in argv if a.lstrip("-").startswith("flagfile=")]
    while todo:
        path = todo.pop(0)
        if path in seen:
            continue
        seen.add(path)
        try:
            with open(path) as f:
                lines = [ln.strip() for ln in f]
        except OSError:
            continue
        if arg in lines:
            return path
        todo += [ln.split("=", 1)[1] for ln in lines if ln.lstrip("-").startswith("flagfile=")]
    return None


def check_flagfile(path: str, within: tuple[str, ...]) -> None:
    """Refuse (exit 2, one line) a ``--flagfile`` that cannot be read as text (absl would
    raise a traceback for a binary file and a cryptic line for a folder), and one that names
    itself, directly or through the flagfiles it names (``within``: the chain that led to
    it; absl would warn and go on without it)."""
    real = os.path.realpath(path)
    if real in within:
        chain = " -> ".join([*within[within.index(real):], real])
        refuse(f"--flagfile={path} names itself through its flagfiles ({chain}): a loop")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read(1 << 20).splitlines()
    except UnicodeDecodeError:
        refuse(f"--flagfile={path} is not a text file of --name=value lines")
    except OSError as e:
        refuse(f"--flagfile={path} cannot be read ({OS_ERRORS.get(e.errno) or e.strerror})")
    for line in lines:
        line = line.strip()
        if line.lstrip("-").startswith("flagfile=") and line.startswith("-"):
            check_flagfile(line.split("=", 1)[1], (*within, real))


def parse_flags(argv: list[str], known_only: bool = False) -> list[str]:
    """absl's flag parsing, but a bad flag, a value out of range, a flagfile line without
    its leading ``--`` or a stray argument exits 2 with one ``error:`` line, and ``--help``
    exits 0."""
    for path in [a.split("=", 1)[1] for a in argv[1:] if a.lstrip("-").startswith("flagfile=")]:
        check_flagfile(path, ())
    try:
        rest = flags.FLAGS(argv, known_only=known_only)
    except flags.Error as e:
        refuse(str(e))
    except UnicodeDecodeError:
        # a flagfile named inside a flagfile that is not text
        refuse("a --flagfile named in a flagfile is not a text file of --name=value lines")
    except SystemExit as e:
        # absl's --help, --helpfull and --helpxml print the usage and exit 1
        raise SystemExit(EXIT_OK if e.code in (0, 1, None) else e.code) from None
    if not known_only and len(rest) > 1:
        arg = rest[1]
        where = _flagfile_of(arg, argv)
        if where:
            refuse(f"{where}: line {arg!r} is not a flag (every line of a flagfile is "
                   "--name=value)")
        refuse(f"unexpected argument {arg!r}: every setting is a flag, --name=value")
    return rest


# a line of TensorFlow's C++ logging (absl format: severity, date, time, thread, file:line])
# or absl's notice before its log is initialised, which TF_CPP_MIN_LOG_LEVEL cannot hide
NATIVE_LOG = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog\(\)"
                        rb"|[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s:]+:\d+\])")


def quiet_tensorflow() -> bool:
    """Hide TensorFlow's C++ log lines unless --tf_log or TF_CPP_MIN_LOG_LEVEL=0, 1 or 2 (in
    the environment) asks for them; call before TensorFlow is imported. Returns whether they
    are hidden.

    Some lines (the CUDA stub's, printed at import before TensorFlow reads its log level)
    ignore TF_CPP_MIN_LOG_LEVEL, so file descriptor 2 goes through a filter that drops
    native log lines (fatal ones, ``F...``, pass) and passes everything else; Python's own
    ``sys.stderr`` writes straight to the terminal."""
    asked = bool(flags.FLAGS["tf_log"].value) if "tf_log" in flags.FLAGS else False
    if asked or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") in ("0", "1", "2"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return False
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    _filter_native_stderr()
    return True


def _filter_native_stderr() -> None:
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read, write = os.pipe()
    except OSError:
        return
    os.dup2(write, 2)
    os.close(write)
    sys.stderr = os.fdopen(os.dup(real), "w", buffering=1, errors="backslashreplace")

    def forward() -> None:
        with os.fdopen(read, "rb") as pipe:
            for line in pipe:
                if not NATIVE_LOG.match(line):
                    os.write(real, line)

    thread = threading.Thread(target=forward, daemon=True, name="native-stderr-filter")
    thread.start()

    def drain() -> None:
        # close the pipe's last writer, let the filter pass what is left, then stop
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            return
        thread.join(timeout=2)

    atexit.register(drain)


def run_app(main: Callable[[list[str]], int], known_only: bool = False) -> None:
    """``app.run`` with ``parse_flags`` and ``quiet_tensorflow``; ``main`` returns the exit
    code (``run_work``'s)."""

    def wrapped(argv: list[str]) -> None:
        hidden = quiet_tensorflow()
        from absl import logging

        logging.set_verbosity(logging.ERROR if hidden else logging.WARNING)
        # Ctrl-C is Python's again as main starts (apps/__init__.py ended the process on one
        # while it started, here too: a KeyboardInterrupt in the stderr filter's thread start
        # would be a traceback): main catches it and says what was saved
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.exit(main(argv))

    app.run(wrapped, flags_parser=lambda argv: parse_flags(argv, known_only=known_only))


def validate(name: str, ok: Callable[[object], bool], what: str) -> None:
    """Register an absl validator: ``--name`` must satisfy ``ok`` (None passes)."""
    flags.register_validator(name, lambda v: v is None or bool(ok(v)),
                             message=f"--{name} must be {what}")


def _on(value: bool) -> str:
    """A bool default as the help texts spell it."""
    return "true" if value else "false"


def define_train_flags() -> None:
    """Every flag of apps.train (names follow the paper's code). A flag that sets a
    ``Config`` field takes its default from ``Config`` (the one home of the defaults); each
    method's settings are defined from its declaration (``bir_keras.settings.Setting``: type,
    help), here, so that every train flag is apps.common's."""
    d = flags
    _D = Config()
    d.DEFINE_string("experiment", _D.experiment, "protocol: split_mnist, permuted_mnist, "
                    "split_cifar100, split_cifar10, split_fashion_mnist, split_digits, or "
                    "custom: your own data at --data_dir (an .npz or a folder of task "
                    f"folders) (default {_D.experiment})")
    d.DEFINE_string("scenario", _D.scenario, "task, domain or class: Task-IL, Domain-IL or "
                    f"Class-IL (default {_D.scenario})")
    d.DEFINE_string("method", _D.method, f"shorthand for a method of the paper with its "
                    f"grid-searched hyper-parameters: {', '.join(METHODS)} (explicit flags win)")
    per = EXPERIMENT_DEFAULTS[_D.experiment]  # an example of the per-experiment defaults
    eg = f"default per experiment, e.g. {{}} on {_D.experiment}"
    d.DEFINE_integer("tasks", _D.tasks, "number of tasks (default: the protocol's; permuted "
                     f"MNIST {EXPERIMENT_DEFAULTS['permuted_mnist']['tasks']})")
    d.DEFINE_integer("iters", _D.iters, f"iterations per task ({eg.format(per['iters'])})")
    d.DEFINE_integer("batch", _D.batch, f"current-task batch size ({eg.format(per['batch'])})")
    d.DEFINE_float("lr", _D.lr, f"Adam learning rate ({eg.format(per['lr'])})")
    d.DEFINE_integer("fc_units", _D.fc_units,
                     f"units per hidden FC layer ({eg.format(per['fc_units'])})")
    d.DEFINE_integer("fc_layers", _D.fc_layers,
                     f"number of hidden FC layers (default {_D.fc_layers})")
    d.DEFINE_integer("seed", _D.seed, "random seed: class order, permutations, init, batches "
                     f"(default {_D.seed})")
    d.DEFINE_bool("keep_label_order", _D.keep_label_order, "take classes in label order instead "
                  f"of a seed-dependent permutation (default {_on(_D.keep_label_order)})")
    d.DEFINE_string("data_dir", _D.data_dir, "local data files (IDX .gz, CIFAR pickles, image "
                    "folder or its .zip); default: TFDS (downloads where the internet is "
                    "reachable). With --experiment=custom: an .npz (x_train, y_train, x_test, "
                    "y_test[, class_names]) or a folder DIR/<task>/{train,test}/<class>/*.png")
    d.DEFINE_integer("classes_per_task", _D.classes_per_task, "--experiment=custom: the data's "
                     "classes form tasks this many at a time, in their order (sorted labels, "
                     "or class_names)")
    d.DEFINE_string("task_classes", None, "--experiment=custom: the classes of each task, "
                    "tasks separated by / and classes by commas, e.g. 3,5/0,1 (class names, "
                    "or labels where the data has no class_names)")
    d.DEFINE_integer("capacity", _D.capacity, "--experiment=custom: the most tasks the run may "
                     "ever hold, so that its export can learn new classes later with "
                     "--resume_from and new --data_dir (default: the data's tasks)")
    d.DEFINE_string("output_dir", None, "where results.json, accuracy.png and tensorboard/ go "
                    "(default runs/<run name>); never overwritten without --overwrite")
    d.DEFINE_string("export_dir", None, "SavedModel + checkpoint + run.json, after every task "
                    "(default saved_models/<output_dir name>)")
    d.DEFINE_string("resume_from", None, "an export dir to continue from with the next tasks")
    d.DEFINE_bool("overwrite", False, "replace an existing --output_dir (default false)")
    replays = ", ".join(m.replay_help for m in DECLARATIONS if m.replay is not None)
    d.DEFINE_string("replay", _D.replay, f"{replays} (default: as --method sets it, else none)")
    d.DEFINE_integer("batch_replay", _D.batch_replay, "replayed samples per iteration (default "
                     "= --batch)")
    d.DEFINE_bool("distill", _D.distill, "soft targets (distillation) for replay (default: on "
                  "with --brain_inspired, else off)")
    d.DEFINE_float("temp", _D.temp, f"distillation temperature (default {_D.temp:g})")
    # each method's settings, as its declaration has them (``bir_keras.settings.Setting``)
    define = {bool: d.DEFINE_bool, int: d.DEFINE_integer, float: d.DEFINE_float,
              str: d.DEFINE_string}
    for s in METHOD_SETTINGS:
        define[s.type](s.name, getattr(_D, s.name), s.help)
    d.DEFINE_bool("hidden", _D.hidden, "internal replay: replay after the frozen conv layers "
                  "(CIFAR)")
    d.DEFINE_bool("freeze_convE", _D.freeze_convE, "freeze the pre-trained conv layers "
                  "(default: with --hidden)")
    d.DEFINE_string("conv_weights", _D.conv_weights, "pre-trained conv weights: a "
                    ".weights.h5 file, or 'authors' (the authors' trunk, converted: "
                    "saved_models/authors_c3_5x16_bn; the default) or 'ours' (pre-trained "
                    "here: saved_models/cifar10_conv); 'random' for an untrained trunk")
    d.DEFINE_string("strategy", _D.strategy, f"tf.distribute strategy: {', '.join(STRATEGIES)} "
                    f"(multi_worker reads TF_CONFIG; default {_D.strategy!r})")
    d.DEFINE_integer("num_logical_cpus", 0, "split the CPU into N logical devices (testing "
                     "--strategy=mirrored without GPUs; default 0 = off)")
    d.DEFINE_string("precision", _D.precision, f"{' or '.join(PRECISIONS)}: mixed_bfloat16 "
                    "computes the networks in bfloat16 and keeps variables, losses, softmaxes, "
                    "log-variances, prior densities, Fisher and SI sums in float32 (default "
                    f"{_D.precision})")
    d.DEFINE_bool("jit_compile", _D.jit_compile, "compile the training step with XLA (default: "
                  "on with one replica, except for convolutions or mixed_bfloat16 on a CPU; "
                  "off over several replicas)")
    d.DEFINE_integer("seeds_at_once", 1, "train seeds --seed .. --seed + K - 1 of this setting "
                     "in one process and one compiled step, vectorised over the seeds; each "
                     "seed writes what a separate run writes, into <output_dir>/seed<s> and "
                     "<export_dir>/seed<s> (default 1)")
    d.DEFINE_bool("deterministic", True, "deterministic ops (same seed, same numbers)")
    d.DEFINE_integer("eval_n", _D.eval_n, "test images per task (a fixed random subset of each "
                     "task's test set) in the accuracies measured after every task but the "
                     "run's last, which uses every test image: evaluation after task t costs "
                     "t x this instead of t whole test sets (a long permuted MNIST run; the "
                     "authors' --acc-n=1024 for their plots during a task); 0 = every test "
                     f"image after every task, as the authors' code (default {_D.eval_n})")
    d.DEFINE_integer("log_every", _D.log_every, "TensorBoard loss logging interval in steps "
                     f"(default {_D.log_every})")
    d.DEFINE_float("checkpoint_every", 5.0, "minutes between checkpoints inside a task, into "
                   "<export_dir>/task_progress (--resume_from continues from it, mid-task); a "
                   "kill loses at most this much; 0 = only after each task (default 5)")
    d.DEFINE_float("progress_every", 30.0, "seconds between progress lines inside a task when "
                   "stdout is not a terminal (a terminal shows a progress bar; default 30)")
    d.DEFINE_string("xla_cache_dir", None, "keep the XLA-compiled steps in this folder and load "
                    "them in later runs instead of compiling again (every seed of a setting "
                    "shares them; one subfolder per TensorFlow version and CPU; the same "
                    "numbers as compiling; default: no cache)")
    validate_train_flags()


# logical devices a CPU is split into for --strategy=mirrored (a test of several replicas
# without GPUs): each replica holds a copy of every network and traces its own step
MAX_LOGICAL_CPUS = 16


def check_replicas(f, c: Config) -> None:
    """Refuse batch sizes that the replicas known from the flags cannot share equally
    (``--strategy=mirrored --num_logical_cpus=N``); the trainer checks the same once the
    devices are known (GPUs, workers of TF_CONFIG)."""
    n = f.num_logical_cpus if c.strategy == "mirrored" else 0
    for name in ("batch", "batch_replay"):
        size = getattr(c, name)
        if n and size is not None and size % n:
            raise ConfigError(f"--{name}={size} must be divisible by the {n} replicas of "
                              f"--num_logical_cpus={n} (each takes an equal share of a batch)")


def validate_train_flags() -> None:
    """Ranges of the flags that are not ``Config`` fields, checked while parsing (before any
    data or TensorFlow loads). The flags that set a ``Config`` field have no validator:
    ``bir_keras.config.resolve`` checks them, each rule once (the apps call it before
    TensorFlow loads)."""
    validate("num_logical_cpus", lambda v: 0 <= v <= MAX_LOGICAL_CPUS,
             f"in [0, {MAX_LOGICAL_CPUS}] (0: off)")


def config_from_flags(f) -> Config:
    """A ``Config`` from parsed flags; ``--method`` fills what was not given explicitly."""
    values = {}
    for field in dataclasses.fields(Config):
        if field.name in f:
            values[field.name] = f[field.name].value
    if values.get("task_classes") is not None:
        values["task_classes"] = parse_task_classes(values["task_classes"])
    if f.method:
        # a flag given against the method is refused, even at its default value (which
        # ``Config`` alone cannot tell from not given)
        check_method_flags(f.method, {k: values[k] for k in values if f[k].present})
        for k, v in method_settings(f.method, f.experiment, f.scenario).items():
            if not f[k].present:
                values[k] = v
    return Config(**values)


def parse_task_classes(text: str) -> tuple[tuple[str, ...], ...]:
    """``--task_classes=3,5/0,1`` as ``(("3", "5"), ("0", "1"))``."""
    tasks = tuple(tuple(c.strip() for c in t.split(",")) for t in text.split("/"))
    if not text.strip() or any(not c for t in tasks for c in t):
        raise ConfigError(f"--task_classes={text}: give each task's classes separated by "
                          "commas and the tasks by /, e.g. 3,5/0,1 (no empty names)")
    return tasks


def run_name(c: Config) -> str:
    """A readable default name: experiment-scenario-method-seed (the method as
    ``bir_keras.config.method_label`` names it, ``+`` written ``-``)."""
    return f"{c.experiment}-{c.scenario}-{method_label(c).replace('+', '-')}-s{c.seed}"


def check_not_empty(f, names: tuple[str, ...]) -> None:
    """Refuse a path flag given empty (``--output_dir=``): it would otherwise fall back to the
    default, or name the working directory."""
    for name in names:
        if name in f and f[name].present and not (f[name].value or "").strip():
            raise ConfigError(f"--{name} is empty: name a path, or leave the flag out for "
                              "its default")


def check_data_dir(path: str | None) -> None:
    """Refuse a ``--data_dir`` that does not exist (before TensorFlow or any data loads)."""
    if path and not os.path.exists(path):
        raise DataError(f"--data_dir={path} does not exist")


def check_stream(config: Config, resolved: Config, resume_from: str | None = None):
    """For ``--experiment=custom``: the data at ``--data_dir``, read, cut into tasks and
    checked as the run will cut and check it (NumPy only: before TensorFlow loads), so that
    bad data is one line before anything starts; None for the paper's experiments. The
    same path is read once per process (apps.compare checks every planned run)."""
    from bir_keras.config import CUSTOM
    from bir_keras.data.streams import check_stream_run, protocol_for

    if resolved.experiment != CUSTOM:
        return None
    stream = _read_stream(config.data_dir or "")
    check_stream_run(resolved, protocol_for(config, stream, resume_from))
    return stream


@functools.lru_cache(maxsize=4)
def _read_stream(data_dir: str):
    from bir_keras.data.stream_files import stream_of

    return stream_of(None, data_dir or None)


def check_conv_weights(c: Config) -> None:
    """Refuse (``DataError``) a ``--conv_weights`` file that the run would read (a CIFAR
    protocol) and that is not the conv trunk's weights, before TensorFlow loads (a name,
    ``authors`` or ``ours``, is checked as the shipped file it names)."""
    from bir_keras.config import has_conv_layers
    from bir_keras.weightsfile import check_weights_file

    if c.conv_weights and c.conv_weights != "random" and has_conv_layers(c.experiment):
        check_weights_file(c.conv_weights, "--conv_weights")

