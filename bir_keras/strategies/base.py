"""The Trainer: a method's step and its hooks. Each method is a subclass in a package of
its own (``finetune``, ``joint``, ``lwf``, ``buffer``, ``generative``), found through its
declaration in the registry ``strategies.METHOD_MODULES`` (``strategies.trainers``); the
regularisers (``ewc``, ``si``) compose with any.

The order of the hooks, per task ``t`` (``loop.fit`` drives it):

1. ``start_task(t)``: ``task_data(t)`` (the task's tensors), ``before_task(t)``
   (regulariser resets), ``step_context(t)`` (tensors fixed for the task) and ``plan(t)``;
2. the compiled step, ``iterations(t)`` times, in chunks (``loop.task_loop`` keeps the
   books): per iteration ``plan_for_iteration``, then ``draw_batch`` (the ``sampler``)
   and ``draw`` (the method's own random numbers), ``replay_batch``, ``losses``, and the
   update of each of ``optim_groups`` (with the regularisers' penalties);
3. ``end_task``: ``after_task(t)`` (Fisher, Omega, a buffer's memory, frozen copies),
   ``evaluate(t)`` (``evaluation.accuracy``), ``loop.report_task``, the callbacks.

A method builds its networks in ``build_models`` (``pretrained`` for a conv trunk). The
records the step passes around are in ``records`` (``TaskData``, ``StepContext``,
``Plan``, ``Draws``, ``Batch``, ``OptimGroup``, ``TaskRun``, ``TaskProgress``); how the
step executes (updates, XLA's part, padding, the chunk loop) in ``execution``. Export, the
experiment runner and the benchmarks use the public methods ``start_task`` /
``run_steps`` / ``loss_names``, ``checkpoint_parts``, ``networks``, ``can_sample`` /
``sample`` and ``tasks_learned``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bir_keras.config import Config, ConfigError
from bir_keras.data.protocols import Protocol
from bir_keras.evaluation.accuracy import Evaluator
from bir_keras.models.layers import dense_gradients
from bir_keras.strategies import loop
from bir_keras.strategies.execution import (
    apply_updates,
    chunk_loop,
    dtype_policy,
    local_slice,
    make_adam,
    pad_samples,
    run_update,
    step_xla,
    xla_update,
)
from bir_keras.strategies.records import (
    Batch,
    Draws,
    History,
    OptimGroup,
    Plan,
    StepContext,
    TaskData,
    TaskProgress,
    TaskRun,
    VariableList,
)
from bir_keras.strategies.regularizers import Regularizer, make_regularizers
from bir_keras.strategies.sampler import BatchSampler


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
            # the batches of each iteration, in shuffled epochs (its counter is the
            # iterations of the current task, part of a checkpoint inside a task)
            self.sampler = BatchSampler(config.batch)
            self.batch_counter = self.sampler.counter
        self.jit_compile = step_xla(config.jit_compile, self.replicas,
                                    protocol.conv and not protocol.features, config.precision)
        if config.jit_compile and not self.jit_compile and verbose:
            print(f"note: --jit_compile ignored: XLA does not compile the step across "
                  f"{self.replicas} replicas", flush=True)
        self.xla_update = xla_update(config.jit_compile, self.jit_compile, self.distributed)
        # No AutoGraph: the step's control flow is written as TF ops (tf.while_loop, tf.cond,
        # tf.where), so converting its Python (and Keras') code changes no graph; the
        # conversion was 8 of the 34 s of a 2-iteration BI-R split MNIST run. A Python `if` on
        # a tensor now fails at trace time instead of being converted.
        self._steps_fn = tf.function(self._steps, reduce_retracing=True, autograph=False,
                                     jit_compile=self.jit_compile or None)
        self.evaluator = Evaluator(self)

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
        """The batch's sample indices, drawn globally (cross-replica): ``BatchSampler``."""
        return self.sampler.draw(data, ctx, plan)

    def size_draw_cache(self, data: TaskData, plan: Plan) -> None:
        """Size the sampler's epoch-order cache for a compiled call (``BatchSampler``)."""
        self.sampler.size_cache(data, plan)

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
        idx = local_slice(draws.idx)
        batch = Batch(x=self.preprocess(tf.gather(data.x, idx)), y=tf.gather(data.y, idx),
                      tid=tf.gather(data.tid, idx))
        own = tf.nest.map_structure(local_slice, draws.own)
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

    def end_task(self, run: TaskRun, means: dict[str, float], start: float,
                 last: bool = True) -> None:
        """After training on ``run.task`` (its mean losses ``means``, started at time
        ``start``; ``last``: the run's last task): the hooks after it, evaluation, logging
        and the callbacks."""
        t = run.task
        self.after_task(t, run.data)
        self.tasks_done.assign(t + 1)
        self.history.task_times.append(time.time() - start)
        self.history.losses.append(means)
        self.history.accuracy_matrix.append(self.evaluate(t, last))
        loop.report_task(self, t)
        for cb in self.callbacks:
            cb(self, t)

    def train_task(self, run: TaskRun, at: TaskProgress | None = None) -> dict[str, float]:
        """Run the compiled step ``iterations(t)`` times (``task_loop``), from ``at`` on if
        given: the task's mean losses."""
        run = run._replace(data=pad_samples(run.data))
        names = self.loss_names(run, self.plan_for_iteration(run.plan, at.iterations if at else 0))
        steps = loop.task_loop(self, run, names, at)
        try:
            plan, k = next(steps)
            while True:
                plan, k = steps.send(self.run_steps(run, k, plan)[0])
        except StopIteration as done:
            return done.value

    # -- evaluation ------------------------------------------------------------------
    def evaluate(self, t: int, last: bool = True) -> list[float | None]:
        """Accuracy on every learned task's test set after learning task ``t``; on
        ``Config.eval_n`` images of each unless ``last`` (``evaluation.accuracy``)."""
        return self.evaluator.evaluate(t, last)
