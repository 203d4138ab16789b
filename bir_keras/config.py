"""Run configuration: one dataclass, the paper's defaults per experiment, the named methods
of the paper as flag sets (method.md sections 2 and 3), and the one check of every setting.

``Config``'s fields are the settings every run has plus those each method declares
(``bir_keras.settings.Method.settings``, in its package of ``bir_keras.strategies``); the
``--replay`` values, the ``--method`` shorthands, each method's defaults (``fill``), rules
(``check``) and packability come from the same declarations (``DECLARATIONS``). Nothing
here imports TensorFlow."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from bir_keras.settings import (
    POSITIVE,
    ConfigError,
    Method,
    Setting,
    check_float,
)
from bir_keras.strategies import DECLARATIONS

# every setting a method adds (``Config`` has a field and apps.train a flag for each)
METHOD_SETTINGS: tuple[Setting, ...] = tuple(s for m in DECLARATIONS for s in m.settings)


def _with_method_settings(cls):
    """Add each method's declared settings (``METHOD_SETTINGS``) to the class as fields
    (``type | None``, their default), before ``dataclass`` makes it a dataclass."""
    annotations = cls.__dict__["__annotations__"]
    for s in METHOD_SETTINGS:
        if s.name in annotations:
            raise ValueError(f"setting {s.name!r} is declared by a method and by Config")
        annotations[s.name] = f"{s.type.__name__} | None"
        setattr(cls, s.name, s.default)
    return cls


@dataclasses.dataclass
@_with_method_settings
class Config:
    """Every setting of a run; ``None`` means "the paper's default for this experiment".

    The fields below are those every run has; each method adds its own, declared in its
    package of ``bir_keras.strategies`` (``METHOD.settings``: e.g. buffer replay's
    ``budget``, EWC's ``ewc_lambda``, BI-R's ``brain_inspired``) and set like any other:
    ``Config(method="buffer", budget=50)``."""

    experiment: str = "split_mnist"
    scenario: str = "class"
    # a named method of the paper (``METHODS``): ``resolve`` sets its flags where they are
    # left at their defaults and refuses a flag that contradicts it
    method: str | None = None
    tasks: int | None = None
    iters: int | None = None
    batch: int | None = None
    lr: float | None = None
    fc_units: int | None = None
    fc_layers: int = 2
    seed: int = 0
    keep_label_order: bool = False
    data_dir: str | None = None
    # your own data (``--experiment=custom``, ``bir_keras.data.streams``): how its classes
    # form tasks (``classes_per_task`` at a time in the data's class order, or explicit
    # ``task_classes``, a tuple of tuples of class names) and the most tasks the run may
    # ever hold (``capacity``; default the data's tasks), so that it can learn more later
    classes_per_task: int | None = None
    task_classes: tuple[tuple[str, ...], ...] | None = None
    capacity: int | None = None
    # replay: one of ``REPLAYS`` (each method's ``Method.replay``)
    # None: off, or as ``method`` sets it (``resolve`` fills the off value): so that
    # ``Config(method="bir", replay="none")`` is refused as ``--method=bir --replay=none`` is
    replay: str | None = None
    batch_replay: int | None = None
    distill: bool | None = None
    temp: float = 2.0
    # the pre-trained conv layers (CIFAR): internal replay of their features (``hidden``,
    # a part of BI-R that any method may use), frozen, and their weights
    hidden: bool | None = None
    freeze_convE: bool | None = None
    conv_weights: str | None = None
    # execution
    strategy: str = "default"
    # float32, or Keras' mixed_bfloat16 policy: bfloat16 compute, float32 variables and losses
    precision: str = "float32"
    jit_compile: bool | None = None   # None: auto (strategies.execution.step_xla)
    eval_batch: int = 1000
    # test images per task in the accuracies measured after each task but the run's last
    # (0: every test image, as the authors' code); the last task's row always uses them all
    eval_n: int = 0
    log_every: int = 50
    # what ``resolve`` changed or noticed that a user should be told (printed at the start)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of all settings."""
        return dataclasses.asdict(self)


SCENARIOS = ("task", "domain", "class")

# experiment -> (dataset, tasks, classes per task, flattened input?)
EXPERIMENTS: dict[str, tuple[str, int, int, bool]] = {
    "split_mnist": ("mnist", 5, 2, True),
    "permuted_mnist": ("mnist", 10, 10, True),
    "split_cifar100": ("cifar100", 10, 10, False),
    "split_cifar10": ("cifar10", 5, 2, False),
    "split_fashion_mnist": ("fashion_mnist", 5, 2, True),
    "split_digits": ("digits", 5, 2, True),
}

# your own data as a stream of tasks (``bir_keras.data.streams``; ``--data_dir`` names an
# ``.npz`` or a folder of task folders): not a row of EXPERIMENTS, its tasks come with the data
CUSTOM = "custom"
# the settings that only a stream reads
STREAM_FIELDS = ("classes_per_task", "task_classes", "capacity")

# permuted MNIST's tasks are drawn, not cut from a dataset: ten times the paper's longest run
PERMUTED_MAX_TASKS = 1000


def max_tasks(experiment: str) -> int | None:
    """The most tasks ``experiment`` has (its dataset's classes split ``classes_per_task`` at a
    time; known before any data loads); permuted MNIST makes a task of any number from one
    dataset and stops at ``PERMUTED_MAX_TASKS``."""
    if experiment == CUSTOM:
        return None   # as many as the data has (and the run's capacity allows)
    _, default_tasks, _, _ = EXPERIMENTS[experiment]
    return PERMUTED_MAX_TASKS if experiment == "permuted_mnist" else default_tasks


def has_conv_layers(experiment: str) -> bool:
    """Whether ``experiment``'s inputs go through conv layers (CIFAR; your own data goes
    into fully connected networks, flattened)."""
    return experiment != CUSTOM and not EXPERIMENTS[experiment][3]


def check_setting(experiment: str, scenario: str, tasks: int | None = None) -> None:
    """Refuse (``ConfigError``) an experiment, a scenario or a number of tasks that no protocol
    has, before any data loads. The one home of these rules: ``make_protocol`` and
    ``bir_keras.config.resolve`` call it."""
    if experiment not in EXPERIMENTS and experiment != CUSTOM:
        raise ConfigError(f"--experiment must be one of {', '.join(EXPERIMENTS)} or {CUSTOM} "
                          f"(your own data), got {experiment!r}")
    if scenario not in SCENARIOS:
        raise ConfigError(f"--scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    if tasks is None:
        return
    if tasks < 1:
        raise ConfigError(f"--tasks must be at least 1, got {tasks}")
    most = max_tasks(experiment)
    if most is None:
        return
    if experiment == "permuted_mnist" and tasks > most:
        raise ConfigError(f"--tasks={tasks}: permuted MNIST runs at most {most} tasks here (the "
                          "paper's longest run has 100; each task is a permutation drawn before "
                          "training and a set of output units)")
    if tasks > most:
        _, _, cpt, _ = EXPERIMENTS[experiment]
        raise ConfigError(f"--tasks={tasks}: {experiment} has {most} tasks of {cpt} classes "
                          f"(ask for at most --tasks={most})")



# method.md 2: iterations per task, learning rate, batch size, hidden units.
EXPERIMENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "split_mnist": dict(iters=2000, lr=0.001, batch=128, fc_units=400),
    "split_fashion_mnist": dict(iters=2000, lr=0.001, batch=128, fc_units=400),
    # 100 tasks as the paper's Fig. 5 and the authors' options.py (fidelity.md item 3)
    "permuted_mnist": dict(iters=2000, lr=0.0001, batch=256, fc_units=2000, tasks=100),
    "split_cifar100": dict(iters=5000, lr=0.0001, batch=256, fc_units=2000),
    "split_cifar10": dict(iters=5000, lr=0.0001, batch=256, fc_units=2000),
    # the offline demo: sklearn's 8x8 digits, small and quick
    "split_digits": dict(iters=300, lr=0.001, batch=64, fc_units=100),
    # your own data: split MNIST's settings, the paper's for fully connected networks
    CUSTOM: dict(iters=2000, lr=0.001, batch=128, fc_units=400),
}

# the values of the settings that take one of a few names (``check`` refuses any other; the
# apps' flags are plain strings, so that this is the one place that says so); the --replay
# values are the methods' (``Method.replay``)
REPLAYS = tuple(m.replay for m in DECLARATIONS if m.replay is not None)
STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_bfloat16")

# method.md 3: grid-searched values (SI c, EWC lambda, online-EWC lambda, XdG / BI-R gating).
# ``dg_prop`` is BI-R's gate proportion; the Fig. 8 variants have their own (``DG_PROPS``).
PAPER_HPARAMS: dict[tuple[str, str], dict[str, Any]] = {
    # split MNIST gates 0.8 in every scenario (the authors' options.py; fidelity.md item 16)
    ("split_mnist", "task"): dict(si_c=10.0, ewc_lambda=1e9, online_lambda=1e9, xdg_prop=0.9,
                                  dg_prop=0.8, bir_si_c=10.0),
    ("split_mnist", "class"): dict(si_c=0.1, ewc_lambda=1e5, online_lambda=1e5, dg_prop=0.8,
                                   bir_si_c=0.1),
    ("split_mnist", "domain"): dict(si_c=0.1, ewc_lambda=1e5, online_lambda=1e5, dg_prop=0.8,
                                    bir_si_c=0.1),
    ("permuted_mnist", "domain"): dict(si_c=10.0, ewc_lambda=1.0, online_lambda=1.0, dg_prop=0.8,
                                       dg_type="task", bir_si_c=1.0, bir_si_dg_prop=0.8),
    ("split_cifar100", "task"): dict(si_c=100.0, ewc_lambda=1000.0, online_lambda=1000.0,
                                     xdg_prop=0.7, dg_prop=0.0, bir_si_c=100.0),
    ("split_cifar100", "class"): dict(si_c=1.0, ewc_lambda=1.0, online_lambda=1.0, dg_prop=0.7,
                                      bir_si_c=1e8, bir_si_dg_prop=0.6),
}


# Gate proportion per BI-R variant of Fig. 8, from the authors' grid search
# (compare_CIFAR100_bir.py, compare_permMNIST100_bir.py, options.py; fidelity.md item 15).
# BI-R + SI: options.py's dg_si_prop (the authors run it in CIFAR-100 Class-IL and permuted
# MNIST only). A variant missing here takes BI-R's value; 0 means no gates.
DG_PROPS: dict[tuple[str, str], dict[str, float]] = {
    ("split_cifar100", "class"): dict(bir=0.7, bir_no_dis=0.8, bir_no_rtf=0.7, bir_no_con=0.6,
                                      bir_no_int=0.9, gr_gat=0.7, bir_si=0.6),
    ("split_cifar100", "task"): dict(bir=0.0, bir_no_dis=0.0, bir_no_rtf=0.3, bir_no_con=0.0,
                                     bir_no_int=0.8, gr_gat=0.1),
    ("permuted_mnist", "domain"): dict(bir=0.8, bir_no_rtf=0.8, bir_no_con=0.0, bir_no_dis=0.6,
                                       gr_gat=0.2, bir_si=0.8),
}


def _family(experiment: str) -> str:
    return {"split_fashion_mnist": "split_mnist", "split_digits": "split_mnist",
            "split_cifar10": "split_cifar100", CUSTOM: "split_mnist"}.get(experiment, experiment)


def paper_hparams(experiment: str, scenario: str) -> dict[str, Any]:
    """The grid-searched values for a setting, falling back to the closest published one
    (permuted MNIST in Task-IL and Class-IL: its Domain-IL values)."""
    key = (experiment, scenario)
    if key in PAPER_HPARAMS:
        return dict(PAPER_HPARAMS[key])
    family = _family(experiment)
    for k in ((family, scenario), (family, "class"), (family, "domain"), ("split_mnist", scenario)):
        if k in PAPER_HPARAMS:
            return dict(PAPER_HPARAMS[k])
    return dict(PAPER_HPARAMS[("split_mnist", "class")])


# The paper's methods as flag sets, used by ``--method`` and by apps.compare: each method's
# shorthands (``Method.shorthands``), in the registry's order.
METHODS: dict[str, dict[str, Any]] = {name: dict(short.sets) for m in DECLARATIONS
                                      for name, short in m.shorthands.items()}
_SHORTHANDS = {name: short for m in DECLARATIONS for name, short in m.shorthands.items()}


def replay_method(replay: str) -> Method:
    """The declaration of the method that ``--replay=replay`` runs (``ConfigError`` if
    none)."""
    for m in DECLARATIONS:
        if m.replay == replay:
            return m
    raise ConfigError(f"--replay must be {_one_of(REPLAYS)}, got {replay!r}")


def selected_methods(c: Config) -> list[Method]:
    """The declarations of the methods a resolved config runs: its ``--replay`` method and
    every switched-on one (``--ewc``, ``--si``, ``--xdg``), in the registry's order."""
    return [m for m in DECLARATIONS if m.selected(c)]


def check_method(method: str) -> None:
    """Refuse a ``--method`` that is not one of ``METHODS`` (the one home of this rule:
    ``method_settings`` and ``check`` call it)."""
    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")


def method_label(c: Config) -> str:
    """What a person calls the run's method: the ``--method`` shorthand when one was given
    (``bir``, not the ``generative`` replay it shares with GR), else the replay (unless
    ``none``) and the switched-on flags (``LABEL_SWITCHES``: ewc, online, si, xdg, distill,
    brain_inspired) joined by ``+``, or ``none``."""
    if c.method:
        return c.method
    parts = [c.replay] if c.replay not in (None, "none") else []
    for k in LABEL_SWITCHES:
        if getattr(c, k):
            parts.append(k)
    return "+".join(parts) or "none"


# the value of each field a method switches on (``METHODS``) when neither the field nor a
# method sets it (its ``Config`` default is None, so that a value given is told from one not):
# the replay and each method's switches (``Setting.off``: ewc, online, si, xdg, brain_inspired)
METHOD_FIELDS_OFF: dict[str, Any] = dict(
    replay="none", **{s.name: s.off for s in METHOD_SETTINGS if s.off is not None})
# the bool settings that name a run's method in ``method_label``, in this order: the
# switches of the methods that compose with any replay, distill, the replay methods' own
LABEL_SWITCHES = (
    *(s.name for m in DECLARATIONS if m.replay is None for s in m.settings if s.off is False),
    "distill",
    *(s.name for m in DECLARATIONS if m.replay is not None for s in m.settings
      if s.off is False))


def with_method(config: Config) -> Config:
    """A copy of ``config`` with its named method's flags (``METHODS``) set where they are
    not given (None): ``Config(method="bir")`` is BI-R, as ``--method=bir`` is, not a plain
    classifier under BI-R's name. A flag given otherwise than the method has it, at any
    value (``Config(method="bir", replay="none")``), is refused (``check_method_flags``);
    the fields no method sets take their off value (``METHOD_FIELDS_OFF``)."""
    c = dataclasses.replace(config)
    if c.method is not None:
        check_method_flags(c.method, {k: getattr(c, k) for k in METHODS.get(c.method, {})
                                      if getattr(c, k) is not None})
        for k, v in METHODS[c.method].items():
            setattr(c, k, v)
    for k, off in METHOD_FIELDS_OFF.items():
        if getattr(c, k) is None:
            setattr(c, k, off)
    return c


def check_method_flags(method: str, given: dict[str, Any]) -> None:
    """Refuse flags ``given`` for the named ``method`` that contradict it (``--method=bir
    --replay=none``): the one home of this rule (``with_method`` and the apps, which can
    tell a flag given at its default value from one not given)."""
    check_method(method)
    for k, v in METHODS[method].items():
        if k in given and given[k] != v:
            def text(x):
                return str(x).lower() if isinstance(x, bool) else str(x)
            raise ConfigError(f"--method={method} sets --{k}={text(v)}: it cannot be run "
                              f"with --{k}={text(given[k])} (drop one of them)")


def method_settings(method: str, experiment: str, scenario: str) -> dict[str, Any]:
    """Flags of a named method with the paper's hyper-parameters for the setting (its
    shorthand's ``paper`` values)."""
    check_method(method)
    out = dict(METHODS[method])
    paper = _SHORTHANDS[method].paper
    if paper is not None:
        out.update(paper(paper_row(experiment, scenario)))
    # BI-R's and its variants' SI strength and gate proportion are filled by ``resolve``
    # from the components, so that the same flags spelled out get the same values
    return out


def paper_row(experiment: str, scenario: str) -> dict[str, Any]:
    """What a method's ``fill`` and a shorthand's ``paper`` read: ``paper_hparams`` with
    ``dg_props``, the gate proportion per BI-R variant (``DG_PROPS``' row, by the closest
    published setting; empty where the paper has none)."""
    props = (DG_PROPS.get((experiment, scenario))
             or DG_PROPS.get((_family(experiment), scenario), {}))
    return dict(paper_hparams(experiment, scenario), dg_props=dict(props))


def resolve(config: Config, conv_protocol: bool | None = None) -> Config:
    """Fill the paper's defaults, expand ``--brain_inspired`` and check compatibility
    (``ConfigError``). ``conv_protocol``: whether the experiment's inputs go through conv
    layers (None: as its protocol has it, ``bir_keras.data.protocols.EXPERIMENTS``).

    The experiment, scenario and number of tasks are checked by the protocols'
    ``check_setting`` (which ``make_protocol`` calls too), every other field by ``check``."""
    check_setting(config.experiment, config.scenario, config.tasks)
    if conv_protocol is None:
        conv_protocol = has_conv_layers(config.experiment)
    c = with_method(config)
    for k, v in EXPERIMENT_DEFAULTS[c.experiment].items():
        if getattr(c, k) is None:
            setattr(c, k, v)
    # each method fills its own settings (its ``fill``: the paper's values, and defaults that
    # follow from other settings: BI-R's components switch on distillation, internal replay
    # and frozen conv layers); what none of them set is off
    paper = paper_row(c.experiment, c.scenario)
    for m in DECLARATIONS:
        if m.fill is not None:
            m.fill(c, paper, conv_protocol)
    if c.distill is None:
        c.distill = False
    if c.hidden is None:
        c.hidden = False
    if c.freeze_convE is None:
        c.freeze_convE = bool(c.hidden)
    unread = []
    if c.data_dir and c.experiment == "split_digits":
        unread.append("--data_dir (split_digits is scikit-learn's bundled digits)")
    if c.conv_weights and not conv_protocol:
        unread.append(f"--conv_weights ({c.experiment} has no conv layers)")
    if conv_protocol and not c.conv_weights:
        # the run's record names the trunk it loads (the default changed: an earlier record
        # without one means "ours", bir_keras.weightsfile.LEGACY_DEFAULT_TRUNK)
        from bir_keras.weightsfile import DEFAULT_TRUNK

        c.conv_weights = DEFAULT_TRUNK
    if unread:
        c.notes = tuple(c.notes) + (f"{' and '.join(unread)}: not read by this run",)
    if c.batch_replay is None:
        c.batch_replay = c.batch
    check(c, conv_protocol)
    return c


def check(c: Config, conv_protocol: bool) -> None:
    """Refuse incompatible or out-of-range settings of a resolved config with one line that
    names the flag (before any training). The one home of every rule about a ``Config``
    field except the experiment, scenario and number of tasks (``resolve`` checks those with
    ``check_setting``); the apps have no validators of their own for these flags. A method's
    own rules are its declaration's ``check`` (called here for every config), its settings'
    ranges and kinds (``Setting.range``, ``Setting.kind``) are checked with everyone's."""
    if c.method is not None:
        check_method(c.method)
    if c.experiment != CUSTOM:
        given = [k for k in STREAM_FIELDS if getattr(c, k) is not None]
        if given:
            raise ConfigError(f"--{given[0]} is for your own data (--experiment={CUSTOM}); "
                              f"{c.experiment} has its own tasks")
    if c.task_classes is not None and (
            isinstance(c.task_classes, str)
            or not all(isinstance(t, (tuple, list)) and t for t in c.task_classes)):
        raise ConfigError("task_classes must be a list of tasks, each a list of class names "
                          f"(--task_classes=a,b/c,d), got {c.task_classes!r}")
    replay = replay_method(c.replay)   # refuses a --replay that no method has
    # each method's own rules first: they name the flag the user gave (--brain_inspired),
    # not a setting it switched on (--distill)
    for m in DECLARATIONS:
        if m.check is not None:
            m.check(c, conv_protocol)
    if c.hidden and not conv_protocol:
        raise ConfigError(f"--hidden (internal replay) needs conv layers, which {c.experiment} "
                          "does not have; use a CIFAR protocol or drop --hidden")
    if c.hidden and not c.freeze_convE:
        raise ConfigError("--hidden replays the output of frozen conv layers: it needs --freeze_convE")
    if c.distill and not replay.distill:
        labelled = tuple(m.replay for m in DECLARATIONS if m.replay and m.distill)
        raise ConfigError("--distill labels replayed samples: it needs --replay="
                          f"{_one_of(labelled)}")
    for name, (low, high) in INT_RANGES.items():
        v = getattr(c, name)
        flag = "eval_batch" if name == "eval_batch" else f"--{name}"  # eval_batch: no flag
        if v is not None and v < low:
            raise ConfigError(f"{flag} must be at least 1, got {v}" if low == 1 else
                              f"{flag} must be >= {low}, got {v}")
        if v is not None and v > high:
            why = f"; {INT_RANGE_WHY[name]}" if name in INT_RANGE_WHY else ""
            raise ConfigError(f"{flag} must be at most {high:,}, got {v:,} (far past any use; "
                              f"see bir_keras.config.INT_RANGES{why})")
    for name, kind in FLOAT_KINDS.items():
        check_float(name, kind, getattr(c, name))
    if not TEMP_RANGE[0] <= c.temp <= TEMP_RANGE[1]:
        raise ConfigError(f"--temp must be in [{TEMP_RANGE[0]:g}, {TEMP_RANGE[1]:g}] (outside it "
                          "the float32 soft targets are one-hot or uniform and the T^2 factor "
                          f"of the distillation loss overflows), got {c.temp}")
    if not 0 <= c.seed < 2 ** 32:
        raise ConfigError(f"--seed must be in [0, 2^32), got {c.seed}")
    if c.strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be {_one_of(STRATEGIES)}, got {c.strategy!r}")
    if c.precision not in PRECISIONS:
        raise ConfigError(f"--precision must be {_one_of(PRECISIONS)}, got {c.precision!r}")


# the rule of each float setting that has one of the shared kinds (``settings.check_float``):
# those of every run, then each method's (``Setting.kind``)
FLOAT_KINDS: dict[str, str] = dict(
    lr=POSITIVE, temp=POSITIVE,
    **{s.name: s.kind for s in METHOD_SETTINGS if s.kind is not None})
TEMP_RANGE = (1e-6, 1e6)
# (lowest, highest) of each integer setting: the highest is far above any use in the paper
# (at most 5000 iterations, 2x2000 units, batch 256) and keeps a typo (an extra digit or
# ten) from running for days or being killed for memory; the memory estimate of the apps
# (``bir_keras.memory.check_memory``) refuses sizes within them that this machine cannot hold
# (each method's integer settings bring their own: ``Setting.range``)
INT_RANGES: dict[str, tuple[int, int]] = dict(
    iters=(1, 10_000_000), batch=(1, 1_000_000), batch_replay=(1, 1_000_000),
    fc_units=(1, 100_000), fc_layers=(0, 32), log_every=(1, 10_000_000),
    eval_batch=(1, 1_000_000), eval_n=(0, 10_000_000), classes_per_task=(1, 100_000),
    capacity=(1, 100_000),
    **{s.name: s.range for s in METHOD_SETTINGS if s.range is not None})
INT_RANGE_WHY = dict(fc_layers="each layer is traced into every step: deeper than this takes "
                               "minutes to compile before the first iteration")


def _one_of(names: tuple[str, ...]) -> str:
    """``a, b or c``."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


def check_seeds_at_once(c: Config, k: int, resume_from: str | None = None) -> None:
    """Refuse (``ConfigError``) what ``--seeds_at_once=K`` cannot pack, from the resolved
    settings alone (``strategies.pack.check_packable`` checks the rest once the networks
    exist): the one home of these rules (``apps.train`` and ``experiment.run`` call it)."""
    if not 1 <= k <= MAX_SEEDS_AT_ONCE:
        raise ConfigError(f"--seeds_at_once must be in [1, {MAX_SEEDS_AT_ONCE}], got {k}")
    if c.seed + k - 1 >= 2 ** 32:
        raise ConfigError(f"--seeds_at_once={k} from --seed={c.seed} reaches seed "
                          f"{c.seed + k - 1}, past the last seed 2^32 - 1: lower --seed")
    if k == 1:
        return
    if resume_from:
        raise ConfigError("--seeds_at_once does not combine with --resume_from: resume each "
                          "seed's export (<export_dir>/seed<s>) on its own")
    why = unpackable(c)
    if why:
        raise ConfigError(why)


def check_intervals(progress_every: float | None, checkpoint_every: float | None) -> None:
    """Refuse (``ConfigError``) a progress interval (seconds; None: no progress lines) or a
    checkpoint interval (minutes; None or 0: only after each task) that is not a finite
    number in range: the one home of this rule (``apps.train``, ``experiment.run``)."""
    if progress_every is not None and not (math.isfinite(progress_every)
                                           and 0.1 <= progress_every <= 1e7):
        raise ConfigError("--progress_every must be a number of seconds in [0.1, 1e7], got "
                          f"{progress_every}")
    if checkpoint_every is not None and not (math.isfinite(checkpoint_every)
                                             and 0 <= checkpoint_every <= 1e7):
        raise ConfigError("--checkpoint_every must be a number of minutes in [0, 1e7] (0: only "
                          f"after each task), got {checkpoint_every}")


# seeds trained in one step: each is a full copy of the networks and their activations
MAX_SEEDS_AT_ONCE = 64


def conv_features(c: Config) -> bool:
    """Whether a resolved config's run trains on conv features cached once
    (``bir_keras.setup.prepare``: internal replay, or frozen conv layers without a generator
    that replays pixels), where its protocol has conv layers."""
    return bool(c.hidden or (c.freeze_convE and c.replay != "generative"))


def unpackable(c: Config) -> str | None:
    """Why the seeds of the resolved setting ``c`` cannot be trained together in one step
    (``--seeds_at_once``, ``strategies.pack``), or None if they can: the one home of these
    rules (a method's own reason is its declaration's ``unpackable``)."""
    for m in selected_methods(c):
        if m.unpackable:
            return m.unpackable
    if c.strategy != "default":
        return (f"--seeds_at_once packs seeds on one device: it does not combine with "
                f"--strategy={c.strategy}")
    if c.jit_compile:
        return ("--seeds_at_once runs its packed step without XLA (on a CPU XLA's vectorised "
                "step is far slower): drop --jit_compile; each packed seed draws what its "
                "--nojit_compile run draws")
    # the inputs are conv features cached once (setup.prepare) or pixels that the step's
    # conv layers see
    if has_conv_layers(c.experiment) and not conv_features(c):
        return ("--seeds_at_once does not pack conv layers that train in the step "
                "(pixel-level CIFAR; batch-norm statistics are state of the step): use "
                "--hidden or --freeze_convE, or run the seeds separately")
    return None
