"""The Trainer: task loop, distribution strategy, one compiled step per iteration, and
evaluation after every task. Methods subclass it and override a few hooks."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from bir_keras.config import Config
from bir_keras.data.protocols import Protocol
from bir_keras.models.classifier import Classifier, distillation_loss, masked_cross_entropy
from bir_keras.models.layers import make_unit_masks, masked_logits
from bir_keras.strategies.fisher import dense_fisher
from bir_keras.strategies.regularizers import EWC, SI, Regularizer


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


def _local(x: tf.Tensor) -> tf.Tensor:
    """This replica's slice of a globally drawn tensor (all randomness is drawn once, in
    cross-replica context, so that any number of replicas sees the same numbers)."""
    ctx = tf.distribute.get_replica_context()
    n = ctx.num_replicas_in_sync
    if n == 1:
        return x
    b = tf.shape(x)[0] // n
    rid = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    return x[rid * b:(rid + 1) * b]


def _pad_samples(data: dict) -> dict:
    """The step's data with x, y and tid zero-padded to the next power of two of samples.

    The step draws indices from ``offsets`` and ``sizes`` only, so padding changes no number;
    it gives tasks of slightly different sizes the same shapes, so the compiled step is
    neither traced again nor (with XLA) recompiled for each task."""
    n = int(data["x"].shape[0])
    size = 1 << max(n - 1, 0).bit_length()
    if size == n:
        return data
    out = dict(data)
    for k in ("x", "y", "tid"):
        v = data[k]
        out[k] = tf.concat([v, tf.zeros([size - n, *v.shape[1:]], v.dtype)], 0)
    return out


def _same_context(a: dict, b: dict) -> bool:
    """Whether two step contexts trace to the same graph (same tensors, same Python values)."""
    if a is b:
        return True
    if a.keys() != b.keys():
        return False
    for k, x in a.items():
        y = b[k]
        if x is y:
            continue
        if isinstance(x, (tf.Tensor, tf.Variable)) or isinstance(y, (tf.Tensor, tf.Variable)) \
                or x != y:
            return False
    return True


class Trainer:
    """Fine-tuning ("None"): the base every method builds on.

    Hooks for subclasses: ``build_models``, ``task_data``, ``before_task``,
    ``replay_batch`` (in-graph), ``extra_losses`` (in-graph), ``after_task``.
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
            self.regularizers = self.make_regularizers()
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

    def make_regularizers(self) -> list[Regularizer]:
        """EWC / online EWC / SI as asked for by the config."""
        c = self.config
        regs: list[Regularizer] = []
        if c.ewc:
            regs.append(EWC(c.ewc_lambda, online=c.online, gamma=c.gamma))
        if c.si:
            regs.append(SI(c.si_c, c.epsilon))
        return regs

    def protected_variables(self) -> list:
        """The parameters regularisers protect (for BI-R: encoder and classifier only)."""
        return list(self.model.trainable_variables)

    def logits(self, model, x: tf.Tensor, task_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Logits over all units of ``model`` (a Classifier or an RtF model)."""
        if isinstance(model, Classifier):
            return model(x, task_ids, training=training)
        return model.classify(x, training=training)

    # -- data ------------------------------------------------------------------------
    def task_data(self, t: int) -> dict[str, tf.Tensor]:
        """Training data of task ``t`` as tensors: x, y, task id, per-task offsets and sizes."""
        task = self.protocol.task(t)
        n = len(task.y_train)
        return {"x": tf.constant(task.x_train), "y": tf.constant(task.y_train, tf.int32),
                "tid": tf.fill([n], tf.constant(t, tf.int32)),
                "offsets": tf.constant([0], tf.int32), "sizes": tf.constant([n], tf.int32)}

    def preprocess(self, x: tf.Tensor) -> tf.Tensor:
        """Stored inputs to model inputs, in-graph (pixels / 255, per-channel normalised)."""
        p = self.protocol
        if x.dtype != tf.uint8:
            return tf.cast(x, tf.float32)
        x = tf.cast(x, tf.float32) / 255.0
        if p.mean is not None:
            x = (x - tf.constant(p.mean, tf.float32)) / tf.constant(p.std, tf.float32)
        return x

    # -- the compiled step -----------------------------------------------------------
    def draw(self, data: dict, ctx: dict) -> dict[str, tf.Tensor]:
        """All random numbers of one iteration, drawn globally (cross-replica).

        The batch: shuffled epochs without replacement, dropping each epoch's last incomplete
        batch, as the authors' ``DataLoader(shuffle=True, drop_last=True)`` (fidelity.md
        item 17). Epoch ``e`` of task ``t`` is a permutation drawn from (seed, t, part, e),
        so a task's batches do not depend on what ran before it. With several parts (Joint
        in Task-IL: one per task, as the authors' separate loaders) the batch's slots are
        dealt to the parts in turn and each part runs its own epochs. A part smaller than
        its share of the batch repeats its samples within the batch."""
        b = self.config.batch
        n_parts = ctx.get("parts", 1)
        n_pad = tf.shape(data["x"])[0]
        it = self.batch_counter.read_value()
        self.batch_counter.assign_add(1)
        # Philox named explicitly: "auto_select" may pick another algorithm under XLA
        fold = lambda key, v: tf.random.experimental.stateless_fold_in(  # noqa: E731
            key, tf.cast(v, tf.int64), alg="philox")
        key = fold(tf.constant([self.config.seed, 0x5EED], tf.int64), ctx["task"])
        pos = tf.range(n_pad)
        parts, slots = [], []
        for p in range(n_parts):
            k = len(range(p, b, n_parts))
            if n_parts == 1:   # one set: the union of whatever the data holds
                size, offset = tf.reduce_sum(data["sizes"]), data["offsets"][0]
            else:
                size, offset = data["sizes"][p], data["offsets"][p]
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
        return {"idx": idx}

    def replay_batch(self, batch: dict, draws: dict, ctx: dict) -> dict | None:
        """In-graph replay for this replica: x, targets, task ids... (None: no replay)."""
        return None

    def model_losses(self, batch: dict, replay: dict | None, draws: dict,
                     ctx: dict) -> dict[str, tf.Tensor]:
        """Per-term losses of the main model, each already divided by its global batch."""
        c = self.config
        out = {}
        logits = self.logits(self.model, batch["x"], batch["tid"], training=True)
        ce = masked_cross_entropy(logits, batch["y"], tf.gather(ctx["active"], batch["tid"]))
        out["class_current"] = tf.nn.compute_average_loss(ce, global_batch_size=c.batch)
        cur = out["class_current"]
        if replay is not None:
            rep = self.replay_class_loss(self.logits(self.model, replay["x"], replay["tid"],
                                                     training=True), replay, ctx)
            out["class_replay"] = rep
            out["total"] = ctx["w_current"] * cur + ctx["w_replay"] * rep
        else:
            out["total"] = cur
        return out

    def replay_class_loss(self, logits: tf.Tensor, replay: dict, ctx: dict) -> tf.Tensor:
        """Hard-target cross-entropy or distillation on replayed samples (method.md 4.1-4.2)."""
        c = self.config
        if "task_w" in replay:
            # every previous task's head on every replayed sample, averaged over the tasks
            cpt = self.protocol.classes_per_task
            flat = tf.reshape(logits, [-1, cpt])
            ones = tf.ones_like(flat)
            if c.distill:
                per = distillation_loss(flat, tf.reshape(replay["soft"], [-1, cpt]), ones, c.temp)
            else:
                per = masked_cross_entropy(flat, tf.reshape(replay["hard"], [-1]), ones)
            per = tf.reduce_sum(tf.reshape(per, [tf.shape(logits)[0], -1]) * replay["task_w"], -1)
            return tf.nn.compute_average_loss(per, global_batch_size=ctx["n_replay"])
        active = tf.gather(ctx["active"], replay["tid"])
        if c.distill:
            per = distillation_loss(logits, replay["soft"], active, c.temp)
        else:
            per = masked_cross_entropy(logits, replay["hard"], active)
        return tf.nn.compute_average_loss(per, global_batch_size=ctx["n_replay"])

    def replay_all_previous_tasks(self) -> bool:
        """Task-IL replay that was not generated for a chosen task (LwF; GR without a
        mixture prior or gates) is labelled by every previous task's head and its loss
        averaged over those tasks (method.md 4.1: "labelled per previous task with that
        task's active units", as the paper's code does). Conditional replay is generated
        per previous task (``ReplayTrainer.per_task_replay``), so it is labelled over that
        task only. With XdG the logits depend on the task's mask, so each sample keeps the
        one task it was drawn for (XdG with replay is not in the paper; the authors' code
        refuses it)."""
        c = self.config
        conditional = c.replay == "generative" and (
            c.prior == "gmm" or bool(c.dg_gates and c.dg_prop > 0))
        return self.protocol.scenario == "task" and not conditional and not c.xdg

    def label_replay(self, prev_model, x: tf.Tensor, tid: tf.Tensor, ctx: dict) -> dict:
        """Targets for replayed inputs from the frozen previous model, over the units it knew."""
        if self.replay_all_previous_tasks():
            cpt = self.protocol.classes_per_task
            z = tf.reshape(self.logits(prev_model, x, tid), [tf.shape(x)[0], -1, cpt])
            n_tasks = tf.shape(z)[1]
            prev = tf.cast(tf.range(n_tasks) < ctx["task"], tf.float32)
            return {"hard": tf.argmax(z, -1, output_type=tf.int32),
                    "soft": tf.nn.softmax(z / self.config.temp),
                    "task_w": prev / tf.maximum(tf.reduce_sum(prev), 1.0)}
        prev_active = tf.gather(ctx["active_prev"], tid)
        z = masked_logits(self.logits(prev_model, x, tid), prev_active)
        return {"hard": tf.argmax(z, -1, output_type=tf.int32),
                "soft": tf.where(prev_active > 0, tf.nn.softmax(z / self.config.temp), 0.0)}

    def _replica_step(self, data: dict, ctx: dict, draws: dict) -> tf.Tensor:
        idx = _local(draws["idx"])
        batch = {"x": self.preprocess(tf.gather(data["x"], idx)),
                 "y": tf.gather(data["y"], idx), "tid": tf.gather(data["tid"], idx)}
        local_draws = {k: _local(v) for k, v in draws.items()}
        replay = self.replay_batch(batch, local_draws, ctx) if ctx["replay"] else None
        groups = self.optim_groups(ctx)
        with tf.GradientTape(persistent=len(groups) > 1) as tape:
            losses = self.model_losses(batch, replay, local_draws, ctx)
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
                         for k in self.loss_names(ctx)])

    def optim_groups(self, ctx: dict) -> list[tuple[str, keras.optimizers.Optimizer, list, bool]]:
        """(loss key, optimiser, variables, has regularisers) for each optimiser of the step."""
        return [("total", self.optimizer, list(self.model.trainable_variables),
                 bool(self.regularizers))]

    def loss_names(self, ctx: dict) -> list[str]:
        """Names of the loss terms the step reports, in order."""
        names = ["total", "class_current"] + (["class_replay"] if ctx["replay"] else [])
        return names + [f"penalty_{r.name}" for r in self.regularizers]

    def _step(self, data: dict, ctx: dict) -> tf.Tensor:
        draws = self.draw(data, ctx)
        per_replica = self.strategy.run(self._replica_step, args=(data, ctx, draws))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _steps(self, data: dict, ctx: dict, n: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Up to ``n`` (<= ``steps_per_call``) iterations of ``_step`` in one graph, stopping
        after the first iteration with a non-finite loss: (losses [steps_per_call, terms],
        iterations run); rows past that count are zeros.

        The same draws and updates as ``n`` calls of ``_step``: bit for bit for the methods
        without a VAE; with one (GR, BI-R) Grappler's arithmetic optimiser rewrites a few of
        its element-wise terms differently inside the loop, which moves losses by float32
        rounding (~1e-8). The same seed still gives the same numbers on every run."""
        size = self.steps_per_call
        terms = len(self.loss_names(ctx))
        rows = tf.TensorArray(tf.float32, size=size, element_shape=[terms])

        def body(i, rows, finite):
            values = self._step(data, ctx)
            return i + 1, rows.write(i, values), tf.reduce_all(tf.math.is_finite(values))

        count, rows, _ = tf.while_loop(
            lambda i, rows, finite: tf.logical_and(i < tf.minimum(n, size), finite),
            body, (tf.constant(0), rows, tf.constant(True)), maximum_iterations=size)
        return rows.stack(), count

    # -- the task loop ---------------------------------------------------------------
    def step_context(self, t: int) -> dict:
        """Tensors that change per task but not per iteration."""
        p = self.protocol
        replay = self.uses_replay and t > 0
        return {"active": tf.constant(p.active_table(t)),
                "active_prev": tf.constant(p.active_table(max(t - 1, 0))),
                "task": tf.constant(t, tf.int32),
                "w_current": tf.constant(1.0 / (t + 1), tf.float32),
                "w_replay": tf.constant(1.0 - 1.0 / (t + 1), tf.float32),
                "replay": replay, "n_replay": self.config.batch_replay}

    def before_task(self, t: int) -> None:
        """Hook before training on task ``t`` (0-based)."""
        for reg in self.regularizers:
            reg.before_task(t)

    def after_task(self, t: int, data: dict) -> None:
        """Hook after training on task ``t``: regulariser updates (EWC's Fisher, SI's Omega)."""
        for reg in self.regularizers:
            reg.after_task(t, lambda: self.fisher(t))

    def iterations(self, t: int) -> int:
        """Iterations of the step for task ``t``."""
        return self.config.iters

    def ctx_for_iteration(self, ctx: dict, i: int) -> dict:
        """The step context of iteration ``i`` (e.g. which optimisers run)."""
        return ctx

    def fit(self, until: int | None = None) -> History:
        """Train on the tasks not yet learned (up to ``until``), evaluating after each."""
        last = self.protocol.num_tasks if until is None else min(until, self.protocol.num_tasks)
        for t in range(int(self.tasks_done.numpy()), last):
            start = time.time()
            self.batch_counter.assign(0)
            data = self.task_data(t)
            self.before_task(t)
            ctx = self.step_context(t)
            means = self.train_task(t, data, ctx)
            self.after_task(t, data)
            self.tasks_done.assign(t + 1)
            self.history.task_times.append(time.time() - start)
            self.history.losses.append(means)
            self.history.accuracy_matrix.append(self.evaluate(t))
            self.log_task(t)
            for cb in self.callbacks:
                cb(self, t)
        return self.history

    def train_task(self, t: int, data: dict, ctx: dict) -> dict[str, float]:
        """Run the compiled step ``iterations(t)`` times with a progress bar, in chunks of up
        to ``steps_per_call`` iterations per call (chunks never span a change of context)."""
        n = self.iterations(t)
        names = self.loss_names(ctx)
        sums = np.zeros(len(names))
        window = np.zeros(len(names))
        bar = keras.utils.Progbar(n, verbose=1 if sys.stdout.isatty() else 2, stateful_metrics=names) \
            if self.verbose else None
        data = _pad_samples(data)
        i = 0
        while i < n:
            step_ctx = self.ctx_for_iteration(ctx, i)
            k = 1
            while (i + k < n and k < self.steps_per_call
                   and _same_context(step_ctx, self.ctx_for_iteration(ctx, i + k))):
                k += 1
            rows, count = self._steps_fn(data, step_ctx, tf.constant(k, tf.int32))
            rows = rows.numpy()[:int(count)]
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

    # -- Fisher (EWC) ------------------------------------------------------------------
    def fisher(self, t: int) -> list[tf.Tensor]:
        """Diagonal Fisher of task ``t`` from ``fisher_n`` training samples, with the model's
        own predicted distribution over the active classes (method.md 3), vectorised."""
        task = self.protocol.task(t)
        n = min(self.config.fisher_n, len(task.y_train))
        sel = np.random.RandomState(self.config.seed + 7 * t).permutation(len(task.y_train))[:n]
        x = self.preprocess(tf.constant(task.x_train[sel]))
        tid = tf.fill([n], tf.constant(t, tf.int32))
        active = tf.gather(tf.constant(self.protocol.active_table(t)), tid)
        variables = self.protected_variables()
        fast = dense_fisher(self.model, variables, x, tid, active)
        if fast is not None:
            return fast
        return fisher_diagonal(lambda xb, tb: self.logits(self.model, xb, tb), variables,
                               x, tid, active)

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


def fisher_diagonal(logits_fn, variables: list, x: tf.Tensor, tid: tf.Tensor,
                    active: tf.Tensor, chunk: int | None = None) -> list[tf.Tensor]:
    """E_x sum_c p(c|x) (d log p(c|x) / d theta)^2 over active c, with per-sample,
    per-class gradients from one vectorised Jacobian per chunk of samples."""
    n = int(x.shape[0])
    n_out = int(active.shape[-1])
    params = sum(int(np.prod(v.shape)) for v in variables)
    if chunk is None:  # keep the Jacobian near 256 MB
        chunk = max(1, min(n, int(64e6 // max(1, params * n_out))))
    totals = [tf.zeros(v.shape) for v in variables]

    @tf.function(reduce_retracing=True, autograph=False)
    def part(xb, tb, ab):
        with tf.GradientTape() as tape:
            log_p = tf.nn.log_softmax(masked_logits(logits_fn(xb, tb), ab))
        jac = tape.jacobian(log_p, variables, experimental_use_pfor=True)
        weight = tf.stop_gradient(tf.where(ab > 0, tf.exp(log_p), 0.0))
        out = []
        for j in jac:
            w = tf.reshape(weight, tf.concat([tf.shape(weight), [1] * (len(j.shape) - 2)], 0))
            out.append(tf.reduce_sum(w * tf.square(j), axis=[0, 1]))
        return out

    for s in range(0, n, chunk):
        res = part(x[s:s + chunk], tid[s:s + chunk], active[s:s + chunk])
        totals = [a + r for a, r in zip(totals, res)]
    return [tf_total / float(n) for tf_total in totals]
