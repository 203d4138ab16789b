"""The Trainer: the task loop, the distribution strategy, one compiled step run in chunks of
iterations, evaluation after every task, and logging. It knows no method: each method is a
subclass in a module of its own (``finetune``, ``joint``, ``lwf``, ``buffer``,
``generative``, ``bir``), found in the registry ``strategies.TRAINERS``, and the
regularisers (``ewc``, ``si``) compose with any of them.

A method says what its networks are (``build_models``, with ``pretrained`` for a conv
trunk), what one iteration draws beyond the batch (``draw``, a record of its own), what it
replays (``replay_batch``), its loss (``losses``, a dict; the step reports its keys) and its
optimisers (``optim_groups``, by name; ``plan_for_iteration`` picks which train). The
Trainer's records hold only what every method has: ``TaskData`` (a task's tensors),
``StepContext`` (tensors fixed for a task), ``Plan`` (the Python values that shape the
compiled step: a change retraces it), ``Draws`` (the batch's indices and the method's own
draws) and ``Batch``. Export, the experiment runner and the benchmarks use the public
methods ``start_task`` / ``run_steps`` / ``loss_names``, ``checkpoint_parts``,
``networks``, ``can_sample`` / ``sample`` and ``tasks_learned``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from bir_keras import interrupts
from bir_keras.config import Config, ConfigError
from bir_keras.data.protocols import Protocol
from bir_keras.models.layers import dense_gradients, masked_logits
from bir_keras.strategies import loop
from bir_keras.strategies.penalties import make_regularizers
from bir_keras.strategies.regularizers import Regularizer, apply_regularized


def apply_updates(regularizers: list[Regularizer], groups: list[OptimGroup],
                  grads: list[list[tf.Tensor]]) -> None:
    """Each group's optimiser applies its gradients (through the regularisers where the
    group is regularised: SI follows the update)."""
    for group, g in zip(groups, grads):
        apply = functools.partial(group.optimizer.apply, g, group.variables)
        if group.regularized:
            apply_regularized(regularizers, apply, g, group.variables)
        else:
            apply()


def xla_update(asked: bool | None, step_xla: bool, distributed: bool) -> bool:
    """Whether a step that runs without XLA (``step_xla`` False) has its update (every
    optimiser's and regulariser's element-wise arithmetic, ``run_update``) compiled by XLA:
    under TensorFlow's default strategy (not ``distributed``: a MirroredStrategy, even over
    one device, applies the update through ``merge_call``, which a nested function cannot),
    unless ``--nojit_compile`` (``asked`` False) asked for no XLA at all. Run op by op,
    Adam's update is a dozen passes over every weight; XLA fuses them into one. Measured on
    a 2-core Xeon with AMX (2026-12-04, README, Speed): BI-R in mixed_bfloat16, ms per
    iteration without / with replay, 57 / 104 -> 46 / 91 on permuted MNIST and 11.7 -> 10.3
    with replay on split MNIST; a whole permuted-MNIST run (2 x 200) 48.0 -> 45.0 s."""
    return not step_xla and not distributed and asked is None


def run_update(update: Callable[[], None], xla: bool) -> None:
    """``update()`` inside the step being traced; with ``xla`` as one XLA cluster of its
    own (a nested ``tf.function(jit_compile=True)``, traced with the step) while the rest of
    the step runs without XLA (``xla_update``). Every group's gradient is taken before any
    update: the gradients use the values the forward pass read, so the order does not
    change them."""
    if xla:
        tf.function(update, jit_compile=True, autograph=False)()
    else:
        update()


def make_adam(lr: float) -> keras.optimizers.Adam:
    """Adam as the authors' code has it: PyTorch's defaults, betas (0.9, 0.999) and epsilon
    1e-8 (Keras' default is 1e-7; fidelity.md item 7)."""
    return keras.optimizers.Adam(lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8)


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite; the message names the step and the term."""


@dataclasses.dataclass
class History:
    """What a run measured: the accuracy matrix and per-task mean losses."""

    accuracy_matrix: list[list[float | None]] = dataclasses.field(default_factory=list)
    losses: list[dict[str, float]] = dataclasses.field(default_factory=list)
    task_times: list[float] = dataclasses.field(default_factory=list)

    @property
    def average_accuracy(self) -> list[float]:
        """Per row, the mean accuracy over the tasks learned so far."""
        return [float(np.mean([a for a in row if a is not None])) for row in self.accuracy_matrix]


class TaskData(NamedTuple):
    """A task's training data as tensors: inputs, labels, task ids, and the offset and size
    of each part (Joint in Task-IL draws from each task's part separately)."""

    x: tf.Tensor
    y: tf.Tensor
    tid: tf.Tensor
    offsets: tf.Tensor
    sizes: tf.Tensor


class StepContext(NamedTuple):
    """Tensors fixed for a task."""

    task: tf.Tensor          # the task's index (0-based)
    active: tf.Tensor        # [tasks, units]: active output units per task row, now
    active_prev: tf.Tensor   # the same after the previous task (what replay is labelled over)
    w_current: tf.Tensor     # 1 / t: the current data's share of the loss (method.md 2)
    w_replay: tf.Tensor      # 1 - 1 / t: replay's share
    # [2] int64: the seed's key of the batch draws, an input rather than a constant of the
    # graph, so that every seed of a setting compiles to the same XLA program (which a
    # persistent XLA cache, ``xla_cache.py``, then compiles once for all of them)
    draw_key: tf.Tensor


class Plan(NamedTuple):
    """The Python values that shape the compiled step (a change traces it again)."""

    replay: bool = False             # whether this task replays
    n_replay: int = 0                # replayed samples per iteration
    parts: int = 1                   # data parts the batch's slots are dealt to
    groups: tuple[str, ...] | None = None  # optimiser groups that train (None: all)


class Draws(NamedTuple):
    """All random numbers of one iteration, drawn once, globally (each replica takes its
    slice of every tensor's first axis)."""

    idx: tf.Tensor          # the batch's sample indices (the Trainer's ``draw_batch``)
    own: Any = None         # the method's own draws (``draw``: a record of its own, or None)


class OptimGroup(NamedTuple):
    """One optimiser of the step: it minimises ``losses[loss]`` over ``variables``; with
    ``regularized`` the regularisers' penalties are in that loss and see its updates."""

    optimizer: keras.optimizers.Optimizer
    variables: list
    loss: str = "total"
    regularized: bool = True


class Batch(NamedTuple):
    """The current data one replica trains on: model inputs, labels, task ids."""

    x: tf.Tensor
    y: tf.Tensor
    tid: tf.Tensor


@dataclasses.dataclass
class TaskProgress:
    """Where a task part-way through stands, at a boundary between compiled calls: what a
    checkpoint inside the task records beside the training state, and what ``fit(resume=)``
    continues from."""

    task: int                 # the task's index (0-based)
    iterations: int           # iterations of the task done
    sums: list[float]         # per loss term, the sum over those iterations (task means)
    window: list[float]       # per loss term, the sum since the last TensorBoard point
    elapsed: float            # seconds spent in the task so far


@contextlib.contextmanager
def dtype_policy(name: str):
    """Networks built inside take Keras' dtype policy ``name`` (``float32`` or
    ``mixed_bfloat16``: bfloat16 compute, float32 variables); the global policy is restored
    after, so that nothing else is built under it."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def weigh(ctx: StepContext, current: tf.Tensor, replay: tf.Tensor | None) -> tf.Tensor:
    """A loss on the current data and one on replay weighted 1/t and 1 - 1/t, t the number
    of tasks so far (method.md 2; the authors' ``rnt``); the current loss alone without
    replay."""
    if replay is None:
        return current
    return ctx.w_current * current + ctx.w_replay * replay


class TaskRun(NamedTuple):
    """What ``start_task`` prepares and ``run_steps`` runs."""

    task: int
    data: TaskData
    ctx: StepContext
    plan: Plan


class VariableList(tf.Module):
    """A list of variables as one checkpointable object."""

    def __init__(self, variables):
        super().__init__()
        self.variables_ = list(variables)


def _local(x: tf.Tensor | None) -> tf.Tensor | None:
    """This replica's slice of a globally drawn tensor (all randomness is drawn once, in
    cross-replica context, so that any number of replicas sees the same numbers)."""
    if x is None:
        return None
    ctx = tf.distribute.get_replica_context()
    n = ctx.num_replicas_in_sync
    if n == 1:
        return x
    b = tf.shape(x)[0] // n
    rid = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    return x[rid * b:(rid + 1) * b]


def pad_samples(data: TaskData) -> TaskData:
    """The data with x, y and tid zero-padded to the next power of two of samples.

    The step draws indices from ``offsets`` and ``sizes`` only, so padding changes no number;
    it gives tasks of slightly different sizes the same shapes, so the compiled step is
    neither traced again nor (with XLA) recompiled for each task."""
    n = int(data.x.shape[0])
    size = 1 << max(n - 1, 0).bit_length()
    if size == n:
        return data

    def pad(v):
        return tf.concat([v, tf.zeros([size - n, *v.shape[1:]], v.dtype)], 0)

    return data._replace(x=pad(data.x), y=pad(data.y), tid=pad(data.tid))


def chunk_loop(step: Callable[[], dict[str, tf.Tensor]], size: int,
               n: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Up to ``n`` (<= ``size``) calls of ``step`` in one ``tf.while_loop``, stopping after
    the first whose terms are not all finite: (per term, its values stacked over the
    ``size`` slots; iterations run). A term may have any shape (a packed step's is [K])."""
    # the terms are what the step returns: known once the body is traced
    rows = tf.TensorArray(tf.float32, size=size)
    names: list[str] = []

    def body(i, rows, finite):
        terms = step()
        names[:] = list(terms)
        values = tf.stack(list(terms.values()))
        return i + 1, rows.write(i, values), tf.reduce_all(tf.math.is_finite(values))

    count, rows, _ = tf.while_loop(
        lambda i, rows, finite: tf.logical_and(i < tf.minimum(n, size), finite),
        body, (tf.constant(0), rows, tf.constant(True)), maximum_iterations=size)
    table = rows.stack()
    return {k: table[:, j] for j, k in enumerate(names)}, count


class Trainer:
    """The method-free engine every method subclasses (``FineTuning`` is the plainest).

    Hooks: ``build_models``, ``networks``, ``task_data``, ``step_context`` / ``plan`` /
    ``plan_for_iteration``, ``iterations``, ``before_task``, ``draw`` and ``replay_batch``
    (in-graph), ``losses`` (in-graph), ``optim_groups``, ``after_task``. A method has a
    network that classifies, ``self.model``, trained by ``self.optimizer``.
    """

    uses_replay = False
    # Iterations run per call of the compiled loop (``_steps``): one call and one fetch of
    # the losses per chunk instead of per iteration (see ``_steps`` for the numbers).
    steps_per_call = 50

    def __init__(self, protocol: Protocol, config: Config,
                 strategy: tf.distribute.Strategy | None = None, verbose: bool = True,
                 trunk_weights: list[np.ndarray] | None = None):
        self.protocol = protocol
        self.config = config
        self.trunk_weights = trunk_weights
        # distributed: a tf.distribute strategy given or in scope (apps' --strategy), even
        # over one device; not: TensorFlow's default strategy
        self.distributed = strategy is not None or tf.distribute.has_strategy()
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.verbose = verbose
        if verbose:
            for note in config.notes:
                print(f"note: {note}", flush=True)
        self.history = History()
        self.summary_writer: tf.summary.SummaryWriter | None = None
        self.callbacks: list[Callable[[Trainer, int], None]] = []
        # called between compiled calls inside a task (a checkpoint every few minutes)
        self.chunk_callbacks: list[Callable[[Trainer, TaskProgress], None]] = []
        self.global_step = 0
        for name, size in (("batch", config.batch), ("batch_replay", config.batch_replay)):
            if size % self.replicas:
                raise ConfigError(f"--{name}={size} must be divisible by the {self.replicas} "
                                  "replicas (each takes an equal share of a batch)")
        # One generator for every random number of training; part of the checkpoint.
        self.rng = tf.random.Generator.from_seed(config.seed)
        keras.utils.set_random_seed(config.seed)
        self._loss_names: dict[tuple, list[str]] = {}
        with self.strategy.scope():
            # the networks are final here (pre-trained conv layers loaded, frozen ones
            # frozen: ``pretrained``), so optimisers and regularisers see what trains
            with dtype_policy(config.precision):
                self.build_models()
            self.optimizer = make_adam(config.lr)
            self.optimizer.build(self.model.trainable_variables)
            self.regularizers: list[Regularizer] = make_regularizers(config)
            for reg in self.regularizers:
                reg.build(self.protected_variables())
            self._check_protected()
            self.tasks_done = tf.Variable(0, trainable=False, name="tasks_done")
            # iterations run in the current task: which epoch and batch ``draw`` is at
            self.batch_counter = tf.Variable(0, trainable=False, name="batch_counter")
            # each data part's shuffled order for its current epoch (``draw_batch``): a
            # cache, not state (recomputed from the seed whenever its key differs)
            self._epoch_order = tf.Variable(tf.zeros([0], tf.int32), shape=tf.TensorShape([None]),
                                            trainable=False, name="epoch_order")
            self._epoch_key = tf.Variable(tf.zeros([0], tf.int64), shape=tf.TensorShape([None]),
                                          trainable=False, name="epoch_key")
        self.jit_compile = self._use_xla(config.jit_compile)
        self.xla_update = xla_update(config.jit_compile, self.jit_compile, self.distributed)
        # No AutoGraph: the step's control flow is written as TF ops (tf.while_loop, tf.cond,
        # tf.where), so converting its Python (and Keras') code changes no graph; the
        # conversion was 8 of the 34 s of a 2-iteration BI-R split MNIST run. A Python `if` on
        # a tensor now fails at trace time instead of being converted.
        self._steps_fn = tf.function(self._steps, reduce_retracing=True, autograph=False,
                                     jit_compile=self.jit_compile or None)
        self._eval_fn = tf.function(self._eval_batch, reduce_retracing=True, autograph=False)

    # -- construction hooks ----------------------------------------------------------
    def build_models(self) -> None:
        """Create ``self.model`` (and the method's other networks: frozen copies, a
        generator, a memory), each through ``pretrained``."""
        raise NotImplementedError

    def pretrained(self, network: keras.Model) -> keras.Model:
        """``network`` with its conv trunk, if it has one, set to the pre-trained weights
        (every method starts from them, method.md 4.4) and frozen with ``--freeze_convE``.
        Called while the networks are built, before any optimiser or regulariser sees
        their variables."""
        trunk = getattr(network, "trunk", None)
        if trunk is not None:
            if self.trunk_weights is not None:
                trunk.set_weights(self.trunk_weights)
            trunk.trainable = not self.config.freeze_convE
        return network

    def _use_xla(self, asked: bool | None) -> bool:
        """Whether the step is compiled with XLA (``asked`` None = auto).

        XLA compiles the step for one device; with several replicas (MirroredStrategy over
        devices, MultiWorkerMirroredStrategy) the step reads variables on other devices and
        all-reduces, which the compiled cluster cannot: there it runs without XLA. Auto is on
        for one device (benchmarks.speed: 25-60% less time per iteration for every method on
        split MNIST, within 5% on permuted MNIST) except for steps with convolutions on a
        CPU, where XLA's CPU convolutions were 25x slower than TensorFlow's (README, Speed).
        """
        if self.replicas > 1:
            if asked and self.verbose:
                print(f"note: --jit_compile ignored: XLA does not compile the step across "
                      f"{self.replicas} replicas", flush=True)
            return False
        if asked is not None:
            return bool(asked)
        if tf.config.list_logical_devices("GPU"):
            return True
        # on a CPU: XLA's convolutions are slower than TensorFlow's, and so is XLA under
        # bfloat16 where bfloat16 pays off at all: BI-R permuted MNIST (2x2000 units), ms per
        # iteration without / with replay, 57 / 98 without XLA against 67 / 141 with it (with
        # 400 units XLA wins, 4.6 / 8.4 against 6.6 / 14.2, but float32 with XLA beats both
        # there: 3.7 / 7.9; README, Speed)
        convs = self.protocol.conv and not self.protocol.features
        return not convs and self.config.precision == "float32"

    def _check_protected(self) -> None:
        """Every variable a regulariser protects is trained by a regularised optimiser (a
        frozen variable in its state would have no update to follow)."""
        trained = {id(v) for g in self.optim_groups().values() if g.regularized
                   for v in g.variables}
        for reg in self.regularizers:
            if any(id(v) not in trained for v in reg.vars):
                raise ValueError(f"{type(self).__name__}: the {reg.name} penalty protects "
                                 "variables that no regularised optimiser trains")

    def protected_variables(self) -> list:
        """The parameters regularisers protect (for BI-R: encoder and classifier only)."""
        return list(self.model.trainable_variables)

    # -- the public API (export, the experiment runner, the benchmarks) ------------------
    @property
    def tasks_learned(self) -> int:
        """How many tasks the networks have been trained on."""
        return int(self.tasks_done.numpy())

    def networks(self) -> dict[str, keras.Model]:
        """The live networks whose weights make the trained model, by name (``model``, the
        one that classifies, first)."""
        return {"model": self.model}

    def checkpoint_parts(self) -> dict[str, object]:
        """Every piece of training state by name (a ``tf.train.Checkpoint``'s children):
        networks, optimisers, frozen copies, regulariser state, the random generator and
        the number of tasks learned. Subclasses add theirs."""
        parts: dict[str, object] = {"model": self.model, "optimizer": self.optimizer,
                                    "rng": self.rng, "tasks_done": self.tasks_done}
        for i, reg in enumerate(self.regularizers):
            for k, v in reg.state().items():
                parts[f"reg{i}_{reg.name}_{k}"] = VariableList(v) if isinstance(v, list) else v
        return parts

    @property
    def can_sample(self) -> bool:
        """Whether the method has a generator (``sample`` works)."""
        return False

    def sample(self, modes: tf.Tensor, tasks: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        """Inputs generated for the given modes (output units; Domain-IL: within-task
        classes) and tasks, from prior noise ``eps`` [n, z_dim]."""
        raise ValueError(f"{type(self).__name__} has no generator to sample from")

    def logits(self, model, x: tf.Tensor, task_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Logits over all units of ``model`` (a Classifier or an RtF model)."""
        return model.classify(x, task_ids, training=training)

    def preprocess(self, x: tf.Tensor) -> tf.Tensor:
        """Stored inputs to model inputs, in-graph (``Protocol.preprocess``)."""
        return self.protocol.preprocess(x)

    # -- data ------------------------------------------------------------------------
    def task_data(self, t: int) -> TaskData:
        """Training data of task ``t`` as tensors, one part."""
        task = self.protocol.task(t)
        n = len(task.y_train)
        return TaskData(x=tf.constant(task.x_train), y=tf.constant(task.y_train, tf.int32),
                        tid=tf.fill([n], tf.constant(t, tf.int32)),
                        offsets=tf.constant([0], tf.int32), sizes=tf.constant([n], tf.int32))

    # -- the compiled step -----------------------------------------------------------
    def draw(self, ctx: StepContext, plan: Plan) -> Any:
        """The method's random numbers of one iteration beyond the batch, drawn globally
        (cross-replica) from ``self.rng``: a record of its own (every tensor with one row
        per sample, which each replica slices), or None."""
        return None

    def draw_batch(self, data: TaskData, ctx: StepContext, plan: Plan) -> tf.Tensor:
        """The batch's sample indices, drawn globally (cross-replica).

        Shuffled epochs without replacement, dropping each epoch's last incomplete
        batch, as the authors' ``DataLoader(shuffle=True, drop_last=True)`` (fidelity.md
        item 17). Epoch ``e`` of task ``t`` is a permutation drawn from (seed, t, part, e),
        so a task's batches do not depend on what ran before it. With several parts (Joint
        in Task-IL: one per task, as the authors' separate loaders) the batch's slots are
        dealt to the parts in turn and each part runs its own epochs. A part smaller than
        its share of the batch repeats its samples within the batch.

        A part's permutation is sorted once per epoch, not per iteration: it is kept in
        ``_epoch_order`` (at the part's own positions) under the key (task, epoch), and
        sorted again only when the key changes. The sort was most of the step: 4.5 of 7.7 ms
        per iteration of BI-R on split MNIST under XLA (a sort of 16384 keys), more for
        bigger tasks. The indices are the same as sorting every iteration."""
        b = self.config.batch
        n_parts = plan.parts
        n_pad = tf.shape(data.x)[0]
        it = self.batch_counter.read_value()
        self.batch_counter.assign_add(1)
        # Philox named explicitly: "auto_select" may pick another algorithm under XLA
        fold = lambda key, v: tf.random.experimental.stateless_fold_in(  # noqa: E731
            key, tf.cast(v, tf.int64), alg="philox")
        key = fold(ctx.draw_key, ctx.task)
        pos = tf.range(n_pad)
        # a cache of other shapes (another task's data) starts empty: every part is sorted
        cache, keys = self._epoch_order.read_value(), self._epoch_key.read_value()
        fresh = tf.logical_or(tf.shape(cache)[0] != n_pad, tf.shape(keys)[0] != n_parts)
        cache = tf.cond(fresh, lambda: tf.zeros([n_pad], tf.int32), lambda: tf.identity(cache))
        keys = tf.cond(fresh, lambda: tf.fill([n_parts], tf.constant(-1, tf.int64)),
                       lambda: tf.identity(keys))
        parts, slots, new_keys = [], [], []
        for p in range(n_parts):
            k = len(range(p, b, n_parts))
            if n_parts == 1:   # one set: the union of whatever the data holds
                size, offset = tf.reduce_sum(data.sizes), data.offsets[0]
            else:
                size, offset = data.sizes[p], data.offsets[p]
            per_epoch = tf.maximum(size // k, 1)
            epoch, j = it // per_epoch, it % per_epoch
            inside = tf.logical_and(pos >= offset, pos < offset + size)
            part_key = tf.cast(ctx.task, tf.int64) * (1 << 32) + tf.cast(epoch, tf.int64)

            def sort(p=p, epoch=epoch, inside=inside, offset=offset, cache=cache):
                u = tf.random.stateless_uniform([n_pad], fold(fold(key, p), epoch), alg="philox")
                order = tf.argsort(tf.where(inside, u, 2.0))
                # the part's samples come first in ``order``: keep them at its positions
                return tf.where(inside, tf.gather(order, tf.clip_by_value(pos - offset, 0, n_pad - 1)),
                                cache)

            cache = tf.cond(keys[p] != part_key, sort, lambda cache=cache: tf.identity(cache))
            new_keys.append(part_key)
            parts.append(tf.gather(cache, offset + tf.math.floormod(j * k + tf.range(k), size)))
            slots += list(range(p, b, n_parts))
        self._epoch_order.assign(cache)
        self._epoch_key.assign(tf.stack(new_keys))
        idx = tf.concat(parts, 0)
        if n_parts > 1:
            idx = tf.gather(idx, np.argsort(slots))
        return idx

    def size_draw_cache(self, data: TaskData, plan: Plan) -> None:
        """Give the epoch-order cache the shapes of this task's padded data and parts before
        a compiled call (XLA compiles for the variables' shapes; eager calls need nothing)."""
        n_pad, n_parts = int(data.x.shape[0]), plan.parts
        # the values' shapes (the variables' own are [None])
        if (tuple(self._epoch_order.read_value().shape) != (n_pad,)
                or tuple(self._epoch_key.read_value().shape) != (n_parts,)):
            self._epoch_order.assign(tf.zeros([n_pad], tf.int32))
            self._epoch_key.assign(tf.fill([n_parts], tf.constant(-1, tf.int64)))

    def replay_batch(self, batch: Batch, draws: Any, ctx: StepContext, plan: Plan):
        """In-graph replay for this replica, from the method's ``draws`` (methods that
        replay override it)."""
        return None

    def losses(self, batch: Batch, replay, draws: Any, ctx: StepContext,
               plan: Plan) -> dict[str, tf.Tensor]:
        """Per-term losses of the step, each already divided by its global batch; each
        optimiser group minimises the term it names (``total`` for the classifier). The
        step reports every term, under its key."""
        raise NotImplementedError

    def optim_groups(self) -> dict[str, OptimGroup]:
        """The step's optimisers by name; ``Plan.groups`` says which train."""
        return {"classifier": OptimGroup(self.optimizer, list(self.model.trainable_variables))}

    def _replica_step(self, data: TaskData, ctx: StepContext, draws: Draws,
                      plan: Plan) -> dict[str, tf.Tensor]:
        idx = _local(draws.idx)
        batch = Batch(x=self.preprocess(tf.gather(data.x, idx)), y=tf.gather(data.y, idx),
                      tid=tf.gather(data.tid, idx))
        own = tf.nest.map_structure(_local, draws.own)
        replay = self.replay_batch(batch, own, ctx, plan) if plan.replay else None
        groups = [g for name, g in self.optim_groups().items()
                  if plan.groups is None or name in plan.groups]
        with tf.GradientTape(persistent=len(groups) > 1) as tape:
            losses = self.losses(batch, replay, own, ctx, plan)
            for reg in self.regularizers:
                # the penalty is counted once over all replicas (their gradients are summed)
                pen = reg.penalty()
                losses[f"penalty_{reg.name}"] = pen
                losses["total"] = losses["total"] + pen / float(self.replicas)
        grads = [dense_gradients(tape.gradient(losses[g.loss], g.variables)) for g in groups]
        run_update(lambda: apply_updates(self.regularizers, groups, grads), self.xla_update)
        # "total" first; penalties are not per-sample: report them once (the replicas' sum)
        return {k: losses[k] / self.replicas if k.startswith("penalty_") else losses[k]
                for k in ["total", *(k for k in losses if k != "total")]}

    def _step(self, data: TaskData, ctx: StepContext, plan: Plan) -> dict[str, tf.Tensor]:
        draws = Draws(idx=self.draw_batch(data, ctx, plan), own=self.draw(ctx, plan))
        per_replica = self.strategy.run(functools.partial(self._replica_step, plan=plan),
                                        args=(data, ctx, draws))
        # term by term: a strategy reduces one (per-replica) tensor at a time
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    def _steps(self, data: TaskData, ctx: StepContext, plan: Plan,
               n: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        """Up to ``n`` (<= ``steps_per_call``) iterations of ``_step`` in one graph, stopping
        after the first iteration with a non-finite loss: (per loss term, its values
        [steps_per_call]; iterations run); values past that count are zeros.

        The same draws and updates as ``n`` calls of ``_step``: bit for bit for the methods
        without a VAE; with one (GR, BI-R) Grappler's arithmetic optimiser rewrites a few of
        its element-wise terms differently inside the loop, which moves losses by float32
        rounding (~1e-8). The same seed still gives the same numbers on every run."""
        return chunk_loop(lambda: self._step(data, ctx, plan), self.steps_per_call, n)

    # -- the task loop ---------------------------------------------------------------
    def step_context(self, t: int) -> StepContext:
        """Tensors that change per task but not per iteration (the same for every method)."""
        p = self.protocol
        return StepContext(task=tf.constant(t, tf.int32),
                           active=tf.constant(p.active_table(t)),
                           active_prev=tf.constant(p.active_table(max(t - 1, 0))),
                           w_current=tf.constant(1.0 / (t + 1), tf.float32),
                           w_replay=tf.constant(1.0 - 1.0 / (t + 1), tf.float32),
                           draw_key=tf.constant([self.config.seed, 0x5EED], tf.int64))

    def plan(self, t: int) -> Plan:
        """The step's shape for task ``t``."""
        return Plan(replay=self.uses_replay and t > 0, n_replay=self.config.batch_replay)

    def plan_for_iteration(self, plan: Plan, i: int) -> Plan:
        """The plan of iteration ``i`` (e.g. which optimiser groups train)."""
        return plan

    def before_task(self, t: int) -> None:
        """Hook before training on task ``t`` (0-based)."""
        for reg in self.regularizers:
            reg.before_task(t)

    def after_task(self, t: int, data: TaskData) -> None:
        """Hook after training on task ``t``: regulariser updates (EWC's Fisher, SI's Omega)."""
        for reg in self.regularizers:
            reg.after_task(t, self)

    def iterations(self, t: int) -> int:
        """Iterations of the step for task ``t``."""
        return self.config.iters

    def start_task(self, t: int) -> TaskRun:
        """Prepare training on task ``t``: its data, the hooks before it, its context."""
        self.batch_counter.assign(0)
        data = self.task_data(t)
        self.before_task(t)
        return TaskRun(t, data, self.step_context(t), self.plan(t))

    def loss_names(self, run: TaskRun, plan: Plan | None = None) -> list[str]:
        """The terms the step reports, in the order of ``run_steps``' columns: the keys
        ``losses`` returns (``total`` first) and the regularisers' penalties. Found by
        tracing the step, a trace that its first call then uses."""
        plan = plan or run.plan
        # the terms depend on the plan and the shapes (a task's data and context)
        key = (plan, tuple(tf.nest.map_structure(lambda v: tuple(v.shape), (run.data, run.ctx))))
        if key not in self._loss_names:
            self.size_draw_cache(run.data, plan)
            fn = self._steps_fn.get_concrete_function(run.data, run.ctx, plan,
                                                      tf.constant(1, tf.int32))
            self._loss_names[key] = list(fn.structured_outputs[0])
        return self._loss_names[key]

    def run_steps(self, run: TaskRun, k: int, plan: Plan | None = None) -> tuple[np.ndarray, int]:
        """Up to ``k`` (<= ``steps_per_call``) iterations in one call: (losses of the
        iterations run [count, terms] in the order of ``loss_names``, count); it stops
        after a non-finite loss."""
        plan = plan or run.plan
        self.size_draw_cache(run.data, plan)
        terms, count = self._steps_fn(run.data, run.ctx, plan, tf.constant(k, tf.int32))
        rows = np.stack([terms[k].numpy() for k in self.loss_names(run, plan)], axis=1)
        return rows[:int(count)], int(count)

    def fit(self, until: int | None = None,
            resume: tuple[TaskProgress, Callable[[Trainer], None]] | None = None) -> History:
        """Train on the tasks not yet learned (up to ``until``), evaluating after each: the
        one task loop of every run (``loop.fit``) over this trainer's own step.

        ``resume=(progress, restore)`` continues a task part-way through: after the task's
        ``start_task`` (its frozen copies, regulariser resets), ``restore(self)`` loads the
        state saved at ``progress`` (weights, optimisers, frozen copies, regulariser sums,
        the random generator, the batch counter), and training goes on from that iteration,
        so the run gives the numbers of one that was never stopped."""
        return loop.fit([self], lambda runs, at: [self.train_task(runs[0], at)], until,
                        resume)[0]

    def end_task(self, run: TaskRun, means: dict[str, float], start: float) -> None:
        """After training on ``run.task`` (its mean losses ``means``, started at time
        ``start``): the hooks after it, evaluation, logging and the callbacks."""
        t = run.task
        self.after_task(t, run.data)
        self.tasks_done.assign(t + 1)
        self.history.task_times.append(time.time() - start)
        self.history.losses.append(means)
        self.history.accuracy_matrix.append(self.evaluate(t))
        self.log_task(t)
        for cb in self.callbacks:
            cb(self, t)

    def train_task(self, run: TaskRun, at: TaskProgress | None = None) -> dict[str, float]:
        """Run the compiled step ``iterations(t)`` times (``task_loop``), from ``at`` on if
        given: the task's mean losses."""
        run = run._replace(data=pad_samples(run.data))
        names = self.loss_names(run, self.plan_for_iteration(run.plan, at.iterations if at else 0))
        loop = self.task_loop(run, names, at)
        try:
            plan, k = next(loop)
            while True:
                plan, k = loop.send(self.run_steps(run, k, plan)[0])
        except StopIteration as done:
            return done.value

    def task_loop(self, run: TaskRun, names: list[str], at: TaskProgress | None = None,
                  interruptible: bool = True):
        """The bookkeeping of one task's training, as a generator: it yields ``(plan, k)``,
        a chunk of up to ``steps_per_call`` iterations (chunks never span a change of plan),
        is sent back the chunk's losses ``[k, terms]`` (columns in the order of ``names``),
        logs them (TensorBoard, progress bar), stops at a non-finite loss, runs
        ``chunk_callbacks`` after each chunk, lets a Ctrl-C land after them (unless not
        ``interruptible``: a ``SeedPack`` checks once every seed has had its chunk, so the
        seeds stop at one step), and returns the task's mean losses. Whoever runs the step
        drives it: ``train_task`` for one trainer, a ``SeedPack`` for several in lockstep.
        ``run`` has its data padded (``pad_samples``)."""
        t = run.task
        n = self.iterations(t)
        sums = np.array(at.sums, np.float64) if at else np.zeros(len(names))
        window = np.array(at.window, np.float64) if at else np.zeros(len(names))
        if len(sums) != len(names) or len(window) != len(names):
            raise ValueError(f"task progress has {len(sums)} loss terms, the step {len(names)}")
        bar = keras.utils.Progbar(n, verbose=1 if sys.stdout.isatty() else 2, stateful_metrics=names) \
            if self.verbose else None
        i = at.iterations if at else 0
        started = time.time() - (at.elapsed if at else 0.0)  # for TaskProgress.elapsed
        while i < n:
            plan = self.plan_for_iteration(run.plan, i)
            k = 1
            while (i + k < n and k < self.steps_per_call
                   and self.plan_for_iteration(run.plan, i + k) == plan):
                k += 1
            rows = yield plan, k
            # count what the model went through at once (an interrupted run reports it)
            first, self.global_step = self.global_step, self.global_step + len(rows)
            for j, values in enumerate(rows):
                if not np.all(np.isfinite(values)):
                    bad = [nm for nm, v in zip(names, values) if not np.isfinite(v)]
                    raise NonFiniteLoss(f"non-finite loss at task {t + 1}, iteration {i + 1} "
                                        f"(global step {first + j + 1}): {', '.join(bad)}")
                sums += values
                window += values
                if (i + 1) % self.config.log_every == 0 or i + 1 == n:
                    m = (i % self.config.log_every) + 1
                    self.log_scalars({f"loss/{nm}": v / m for nm, v in zip(names, window)},
                                     first + j + 1)
                    window[:] = 0
                    if bar is not None:
                        bar.update(i + 1, [(nm, float(v)) for nm, v in zip(names, values)])
                i += 1
            for cb in self.chunk_callbacks:
                cb(self, TaskProgress(t, i, sums.tolist(), window.tolist(),
                                      time.time() - started))
            if interruptible:
                interrupts.raise_if_requested()  # Ctrl-C lands here, between compiled calls
        return {nm: float(v / max(n, 1)) for nm, v in zip(names, sums)}

    # -- evaluation ------------------------------------------------------------------
    def _eval_batch(self, x, y, tid, active_row):
        logits = self.logits(self.model, self.preprocess(x), tid)
        pred = tf.argmax(masked_logits(logits, active_row[None]), -1, output_type=tf.int32)
        return tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.int32))

    def evaluate(self, t: int) -> list[float | None]:
        """Accuracy on every learned task's test set after learning task ``t``."""
        table = self.protocol.active_table(t)
        row: list[float | None] = []
        for j in range(self.protocol.num_tasks):
            if j > t:
                row.append(None)
                continue
            row.append(self.task_accuracy(j, table[j]))
        return row

    def task_accuracy(self, j: int, active_row: np.ndarray) -> float:
        """Test accuracy on task ``j`` with the given active units."""
        x_test, y_test = self.protocol.test_set(j)
        correct, bs = 0, self.config.eval_batch
        active = tf.constant(active_row)
        for s in range(0, len(y_test), bs):
            x = x_test[s:s + bs]
            correct += int(self._eval_fn(tf.constant(x), tf.constant(y_test[s:s + bs]),
                                         tf.fill([len(x)], tf.constant(j, tf.int32)), active))
        return correct / len(y_test)

    # -- logging -----------------------------------------------------------------------
    def log_scalars(self, values: dict[str, float], step: int) -> None:
        """Write scalars to TensorBoard when a writer is attached."""
        if self.summary_writer is None:
            return
        with self.summary_writer.as_default(step=step):
            for k, v in values.items():
                tf.summary.scalar(k, v, description="x axis: training iteration (global step); "
                                  f"mean over the last {self.config.log_every} iterations")

    def log_task(self, t: int) -> None:
        """Accuracy per task and the average after task ``t``, to TensorBoard and stdout."""
        row = self.history.accuracy_matrix[-1]
        avg = self.history.average_accuracy[-1]
        vals = {f"accuracy/task{j + 1}": a for j, a in enumerate(row) if a is not None}
        vals["accuracy/average"] = avg
        if self.summary_writer is not None:
            with self.summary_writer.as_default(step=t + 1):
                for k, v in vals.items():
                    tf.summary.scalar(k, v, description="x axis: number of tasks learned; test "
                                      "accuracy (set smoothing to 0: few points)")
            self.summary_writer.flush()
        if self.verbose:
            accs = " ".join(f"{a:.4f}" for a in row if a is not None)
            print(f"task {t + 1}/{self.protocol.num_tasks}: average accuracy {avg:.4f} "
                  f"[{accs}] ({self.history.task_times[-1]:.1f}s)", flush=True)
