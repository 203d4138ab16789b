"""The Trainer: the task loop, the distribution strategy, one compiled step run in chunks of
iterations, evaluation after every task, and logging. It knows no method: each method is a
small subclass in a module of its own (``finetune``, ``joint``, ``lwf``, ``generative``,
``bir``, ``buffer``), and the regularisers (``ewc``, ``si``) compose with any of them.

A subclass says what its models are (``build_models``), what one iteration draws
(``draw``), what it replays (``replay_batch``) and its loss (``losses``, written with the
models' own ``loss_terms``). The step's data are typed: ``TaskData`` (a task's tensors),
``StepContext`` (tensors fixed for a task), ``Plan`` (the Python values that shape the
compiled step: a change retraces it), ``Draws`` (one iteration's random numbers) and
``Batch``. Export, the experiment runner and the benchmarks use the public methods
``start_task`` / ``run_steps``, ``checkpoint_parts``, ``networks``, ``can_sample`` /
``sample`` and ``tasks_learned``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from bir_keras import interrupts
from bir_keras.config import Config
from bir_keras.data.protocols import Protocol
from bir_keras.models.classifier import Classifier
from bir_keras.models.layers import make_unit_masks, masked_logits
from bir_keras.strategies.regularizers import Regularizer, make_regularizers


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
    replay_tasks: tf.Tensor | None = None  # fixed task of each replayed sample, if any


class Plan(NamedTuple):
    """The Python values that shape the compiled step (a change traces it again)."""

    replay: bool = False            # whether this task replays
    n_replay: int = 0               # replayed samples per iteration
    parts: int = 1                  # data parts the batch's slots are dealt to
    train_classifier: bool = True   # GR: iterations past --iters train the generator only
    train_generator: bool = True    # GR: iterations past --g_iters train the classifier only


class Draws(NamedTuple):
    """All random numbers of one iteration (drawn once, globally; each replica takes its
    slice). Methods fill the fields they use."""

    idx: tf.Tensor                      # the batch's sample indices
    r_modes: tf.Tensor | None = None    # replay: each sample's mode (output unit)
    r_tasks: tf.Tensor | None = None    # replay: each sample's task
    r_idx: tf.Tensor | None = None      # buffer replay: stored samples' indices
    eps: tf.Tensor | None = None        # VAE noise on the current batch
    r_eps: tf.Tensor | None = None      # prior noise of the generated samples
    r_eps_enc: tf.Tensor | None = None  # VAE noise on the replayed samples


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


def _pad_samples(data: TaskData) -> TaskData:
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


class Trainer:
    """The method-free engine every method subclasses (``FineTuning`` is the plainest).

    Hooks: ``build_models``, ``task_data``, ``step_context`` / ``plan``, ``before_task``,
    ``draw`` and ``replay_batch`` (in-graph), ``losses`` (in-graph), ``loss_names``,
    ``optim_groups``, ``after_task``.
    """

    uses_replay = False
    # Iterations run per call of the compiled loop (``_steps``): one call and one fetch of
    # the losses per chunk instead of per iteration (see ``_steps`` for the numbers).
    steps_per_call = 50

    def __init__(self, protocol: Protocol, config: Config,
                 strategy: tf.distribute.Strategy | None = None, verbose: bool = True):
        self.protocol = protocol
        self.config = config
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
                raise ValueError(f"--{name}={size} must be divisible by the {self.replicas} replicas")
        # One generator for every random number of training; part of the checkpoint.
        self.rng = tf.random.Generator.from_seed(config.seed)
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope():
            self.build_models()
            self.optimizer = make_adam(config.lr)
            self.optimizer.build(self.model.trainable_variables)
            self.regularizers: list[Regularizer] = make_regularizers(config)
            for reg in self.regularizers:
                reg.build(self.protected_variables())
            self.tasks_done = tf.Variable(0, trainable=False, name="tasks_done")
            # iterations run in the current task: which epoch and batch ``draw`` is at
            self.batch_counter = tf.Variable(0, trainable=False, name="batch_counter")
        self.jit_compile = self._use_xla(config.jit_compile)
        self._step_fn = tf.function(self._step, reduce_retracing=True,
                                    jit_compile=self.jit_compile or None)
        self._steps_fn = tf.function(self._steps, reduce_retracing=True,
                                     jit_compile=self.jit_compile or None)
        self._eval_fn = tf.function(self._eval_batch, reduce_retracing=True)

    # -- construction hooks ----------------------------------------------------------
    def build_models(self) -> None:
        """Create ``self.model`` (and, for replay methods, frozen copies / a generator)."""
        self.model = self.make_classifier()

    def make_classifier(self) -> Classifier:
        """The classifier of this protocol, with XdG masks when asked for."""
        c, p = self.config, self.protocol
        units = [c.fc_units] * c.fc_layers
        xdg = None
        if c.xdg:
            xdg = [make_unit_masks(p.capacity, u, c.xdg_prop, seed=c.seed + 1000 + i)
                   for i, u in enumerate(units)]
        return Classifier(p.input_shape, p.num_outputs, units, conv=p.conv and not p.features,
                          xdg_masks=xdg, seed=c.seed)

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
        convs = self.protocol.conv and not self.protocol.features
        return not (convs and not tf.config.list_logical_devices("GPU"))

    def protected_variables(self) -> list:
        """The parameters regularisers protect (for BI-R: encoder and classifier only)."""
        return list(self.model.trainable_variables)

    # -- the public API (export, the experiment runner, the benchmarks) ------------------
    @property
    def tasks_learned(self) -> int:
        """How many tasks the networks have been trained on."""
        return int(self.tasks_done.numpy())

    def networks(self) -> dict[str, keras.Model]:
        """The live networks whose weights make the trained model."""
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
    def draw(self, data: TaskData, ctx: StepContext, plan: Plan) -> Draws:
        """All random numbers of one iteration, drawn globally (cross-replica).

        The batch: shuffled epochs without replacement, dropping each epoch's last incomplete
        batch, as the authors' ``DataLoader(shuffle=True, drop_last=True)`` (fidelity.md
        item 17). Epoch ``e`` of task ``t`` is a permutation drawn from (seed, t, part, e),
        so a task's batches do not depend on what ran before it. With several parts (Joint
        in Task-IL: one per task, as the authors' separate loaders) the batch's slots are
        dealt to the parts in turn and each part runs its own epochs. A part smaller than
        its share of the batch repeats its samples within the batch."""
        b = self.config.batch
        n_parts = plan.parts
        n_pad = tf.shape(data.x)[0]
        it = self.batch_counter.read_value()
        self.batch_counter.assign_add(1)
        # Philox named explicitly: "auto_select" may pick another algorithm under XLA
        fold = lambda key, v: tf.random.experimental.stateless_fold_in(  # noqa: E731
            key, tf.cast(v, tf.int64), alg="philox")
        key = fold(tf.constant([self.config.seed, 0x5EED], tf.int64), ctx.task)
        pos = tf.range(n_pad)
        parts, slots = [], []
        for p in range(n_parts):
            k = len(range(p, b, n_parts))
            if n_parts == 1:   # one set: the union of whatever the data holds
                size, offset = tf.reduce_sum(data.sizes), data.offsets[0]
            else:
                size, offset = data.sizes[p], data.offsets[p]
            per_epoch = tf.maximum(size // k, 1)
            epoch, j = it // per_epoch, it % per_epoch
            u = tf.random.stateless_uniform([n_pad], fold(fold(key, p), epoch), alg="philox")
            inside = tf.logical_and(pos >= offset, pos < offset + size)
            order = tf.argsort(tf.where(inside, u, 2.0))
            parts.append(tf.gather(order, tf.math.floormod(j * k + tf.range(k), size)))
            slots += list(range(p, b, n_parts))
        idx = tf.concat(parts, 0)
        if n_parts > 1:
            idx = tf.gather(idx, np.argsort(slots))
        return Draws(idx=idx)

    def replay_batch(self, batch: Batch, draws: Draws, ctx: StepContext, plan: Plan):
        """In-graph replay for this replica (methods that replay override it)."""
        return None

    def losses(self, batch: Batch, replay, draws: Draws, ctx: StepContext,
               plan: Plan) -> dict[str, tf.Tensor]:
        """Per-term losses of the step (``total`` is what the main optimiser minimises),
        each already divided by its global batch."""
        raise NotImplementedError

    def loss_names(self, plan: Plan) -> list[str]:
        """Names of the loss terms the step reports, in order (``losses`` plus penalties)."""
        raise NotImplementedError

    def optim_groups(self, plan: Plan) -> list[tuple[str, keras.optimizers.Optimizer, list, bool]]:
        """(loss key, optimiser, variables, has regularisers) for each optimiser of the step."""
        return [("total", self.optimizer, list(self.model.trainable_variables),
                 bool(self.regularizers))]

    def _replica_step(self, data: TaskData, ctx: StepContext, draws: Draws,
                      plan: Plan) -> tf.Tensor:
        idx = _local(draws.idx)
        batch = Batch(x=self.preprocess(tf.gather(data.x, idx)), y=tf.gather(data.y, idx),
                      tid=tf.gather(data.tid, idx))
        local_draws = Draws(*[_local(v) for v in draws])
        replay = self.replay_batch(batch, local_draws, ctx, plan) if plan.replay else None
        groups = self.optim_groups(plan)
        with tf.GradientTape(persistent=len(groups) > 1) as tape:
            losses = self.losses(batch, replay, local_draws, ctx, plan)
            for reg in self.regularizers:
                # the penalty is counted once over all replicas (their gradients are summed)
                pen = reg.penalty()
                losses[f"penalty_{reg.name}"] = pen
                losses["total"] = losses["total"] + pen / float(self.replicas)
        for loss_key, optimizer, variables, regs in groups:
            grads = tape.gradient(losses[loss_key], variables)
            before = [tf.identity(v) for v in variables] if regs else None
            optimizer.apply(grads, variables)
            if regs:
                rctx = tf.distribute.get_replica_context()
                applied = rctx.all_reduce(tf.distribute.ReduceOp.SUM, grads) if self.replicas > 1 else grads
                index = {id(v): i for i, v in enumerate(variables)}
                for reg in self.regularizers:
                    sel = [index[id(v)] for v in reg.vars]
                    reg.after_apply([applied[i] for i in sel],
                                    [tf.convert_to_tensor(variables[i]) - before[i] for i in sel])
        # penalties are not per-sample: report them once (divide by the replica sum below)
        return tf.stack([losses[k] if not k.startswith("penalty_") else losses[k] / self.replicas
                         for k in self.all_loss_names(plan)])

    def all_loss_names(self, plan: Plan) -> list[str]:
        """The method's loss names and the regularisers' penalties."""
        return self.loss_names(plan) + [f"penalty_{r.name}" for r in self.regularizers]

    def _step(self, data: TaskData, ctx: StepContext, plan: Plan) -> tf.Tensor:
        draws = self.draw(data, ctx, plan)
        per_replica = self.strategy.run(functools.partial(self._replica_step, plan=plan),
                                        args=(data, ctx, draws))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _steps(self, data: TaskData, ctx: StepContext, plan: Plan,
               n: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Up to ``n`` (<= ``steps_per_call``) iterations of ``_step`` in one graph, stopping
        after the first iteration with a non-finite loss: (losses [steps_per_call, terms],
        iterations run); rows past that count are zeros.

        The same draws and updates as ``n`` calls of ``_step``: bit for bit for the methods
        without a VAE; with one (GR, BI-R) Grappler's arithmetic optimiser rewrites a few of
        its element-wise terms differently inside the loop, which moves losses by float32
        rounding (~1e-8). The same seed still gives the same numbers on every run."""
        size = self.steps_per_call
        terms = len(self.all_loss_names(plan))
        rows = tf.TensorArray(tf.float32, size=size, element_shape=[terms])

        def body(i, rows, finite):
            values = self._step(data, ctx, plan)
            return i + 1, rows.write(i, values), tf.reduce_all(tf.math.is_finite(values))

        count, rows, _ = tf.while_loop(
            lambda i, rows, finite: tf.logical_and(i < tf.minimum(n, size), finite),
            body, (tf.constant(0), rows, tf.constant(True)), maximum_iterations=size)
        return rows.stack(), count

    # -- the task loop ---------------------------------------------------------------
    def step_context(self, t: int) -> StepContext:
        """Tensors that change per task but not per iteration."""
        p = self.protocol
        return StepContext(task=tf.constant(t, tf.int32),
                           active=tf.constant(p.active_table(t)),
                           active_prev=tf.constant(p.active_table(max(t - 1, 0))),
                           w_current=tf.constant(1.0 / (t + 1), tf.float32),
                           w_replay=tf.constant(1.0 - 1.0 / (t + 1), tf.float32))

    def plan(self, t: int) -> Plan:
        """The step's shape for task ``t``."""
        return Plan(replay=self.uses_replay and t > 0, n_replay=self.config.batch_replay)

    def plan_for_iteration(self, plan: Plan, i: int) -> Plan:
        """The plan of iteration ``i`` (e.g. which optimisers run)."""
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

    def run_steps(self, run: TaskRun, k: int, plan: Plan | None = None) -> tuple[np.ndarray, int]:
        """Up to ``k`` (<= ``steps_per_call``) iterations in one call: (losses of the
        iterations run [count, terms], count); it stops after a non-finite loss."""
        rows, count = self._steps_fn(run.data, run.ctx, plan or run.plan, tf.constant(k, tf.int32))
        return rows.numpy()[:int(count)], int(count)

    def fit(self, until: int | None = None,
            resume: tuple[TaskProgress, Callable[[Trainer], None]] | None = None) -> History:
        """Train on the tasks not yet learned (up to ``until``), evaluating after each.

        ``resume=(progress, restore)`` continues a task part-way through: after the task's
        ``start_task`` (its frozen copies, regulariser resets), ``restore(self)`` loads the
        state saved at ``progress`` (weights, optimisers, frozen copies, regulariser sums,
        the random generator, the batch counter), and training goes on from that iteration,
        so the run gives the numbers of one that was never stopped."""
        last = self.protocol.num_tasks if until is None else min(until, self.protocol.num_tasks)
        for t in range(self.tasks_learned, last):
            start = time.time()
            run = self.start_task(t)
            at = None
            if resume is not None and resume[0].task == t:
                at, restore = resume
                restore(self)
                start -= at.elapsed
            means = self.train_task(run, at)
            self.after_task(t, run.data)
            self.tasks_done.assign(t + 1)
            self.history.task_times.append(time.time() - start)
            self.history.losses.append(means)
            self.history.accuracy_matrix.append(self.evaluate(t))
            self.log_task(t)
            for cb in self.callbacks:
                cb(self, t)
            interrupts.raise_if_requested()
        return self.history

    def train_task(self, run: TaskRun, at: TaskProgress | None = None) -> dict[str, float]:
        """Run the compiled step ``iterations(t)`` times with a progress bar, in chunks of up
        to ``steps_per_call`` iterations per call (chunks never span a change of plan);
        from ``at`` on if given. ``chunk_callbacks`` run after each chunk."""
        t = run.task
        n = self.iterations(t)
        names = self.all_loss_names(run.plan)
        sums = np.array(at.sums, np.float64) if at else np.zeros(len(names))
        window = np.array(at.window, np.float64) if at else np.zeros(len(names))
        if len(sums) != len(names) or len(window) != len(names):
            raise ValueError(f"task progress has {len(sums)} loss terms, the step {len(names)}")
        bar = keras.utils.Progbar(n, verbose=1 if sys.stdout.isatty() else 2, stateful_metrics=names) \
            if self.verbose else None
        run = run._replace(data=_pad_samples(run.data))
        i = at.iterations if at else 0
        started = time.time() - (at.elapsed if at else 0.0)  # for TaskProgress.elapsed
        while i < n:
            plan = self.plan_for_iteration(run.plan, i)
            k = 1
            while (i + k < n and k < self.steps_per_call
                   and self.plan_for_iteration(run.plan, i + k) == plan):
                k += 1
            rows, _ = self.run_steps(run, k, plan)
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
        task = self.protocol.task(j)
        correct, bs = 0, self.config.eval_batch
        active = tf.constant(active_row)
        for s in range(0, len(task.y_test), bs):
            x = task.x_test[s:s + bs]
            correct += int(self._eval_fn(tf.constant(x), tf.constant(task.y_test[s:s + bs]),
                                         tf.fill([len(x)], tf.constant(j, tf.int32)), active))
        return correct / len(task.y_test)

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
