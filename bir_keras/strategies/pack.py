"""Several seeds of one setting trained together (``--seeds_at_once``): a ``SeedPack``.

Each seed keeps an ordinary ``Trainer`` of its own: its protocol (class order,
permutations), networks and initial weights, optimisers, random generator, batch counter,
regulariser state, history, callbacks, export and TensorBoard run. So everything a separate
run of that seed has is there, and a seed's export is a normal one that loads and resumes
on its own. What is shared is the task loop and, with more than one seed, one compiled step
for all of them:

* each seed draws its batch and its method's draws with its own ``draw_batch`` / ``draw``
  (small ops, one per seed), so its batches and random numbers are those of its separate
  run;
* the method's ``replay_batch`` and ``losses`` -- the code of the first seed's trainer,
  unchanged -- run once under ``tf.vectorized_map`` over a leading seed axis: every
  variable of the networks (live ones and frozen copies) is stacked over the seeds
  (``[K, ...]``) and put in place of the first seed's variables by a
  ``keras.StatelessScope``, so each dense layer becomes one batched matmul over the seeds.
  Constants of the networks that differ between seeds (XdG's masks, BI-R's decoder gates,
  both drawn from the seed) are swapped the same way (``_seed_constants``);
* one tape takes the gradient of the sum of the seeds' losses; seeds share no weight, so
  each seed's slice of it is that seed's own gradient, which its own optimiser applies
  (through its regularisers: SI follows its own updates). The regularisers' penalties are
  computed per seed, on the seed's own variables.

The first-iteration losses of a packed seed match its separate run's to float32 rounding
(tests/strategies/test_pack.py); over a whole run the floats drift apart as on two CPUs
(batched matmuls round differently), so the check of whole runs is statistical (README).

The packed step runs without XLA: on a CPU, XLA's lowering of the vectorised step was two
orders of magnitude slower than the same losses written per seed (BI-R split MNIST, four
seeds: 17.6 s per iteration against 13 ms; docs/speed.md). One seed is the same task loop
with the trainer's own compiled step (``Trainer.fit`` is a pack of one).

Not packed (``check_packable`` refuses them with one line, by ``config.unpackable`` and
each method's declared reason): buffer replay (its memory is written inside the step),
conv layers that train inside the step (pixel-level CIFAR:
batch-norm statistics are state the step updates), several replicas, and resuming a run
part-way through a task (each seed saves its own checkpoints inside a task, and its export
resumes alone: ``experiment`` then steps it without XLA, as the pack did, so that it draws
what it was trained with).
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from bir_keras import interrupts
from bir_keras.config import ConfigError, unpackable
from bir_keras.models.layers import dense_gradients
from bir_keras.strategies import loop
from bir_keras.strategies.base import Trainer
from bir_keras.strategies.execution import (
    apply_updates,
    chunk_loop,
    pad_samples,
    run_update,
    xla_update,
)
from bir_keras.strategies.records import Batch, NonFiniteLoss, Plan, TaskProgress, TaskRun


def check_packable(trainers: list[Trainer]) -> None:
    """Refuse (``ConfigError``) what one vectorised step cannot train: trainers of different
    methods or settings (other than the seed), a setting that ``config.unpackable`` refuses
    (the one home of those rules: a method's own reason, conv layers trained in the step,
    another strategy, an explicit request for XLA), and trainers built over several
    replicas (a strategy passed to them, which their config cannot tell)."""
    first = trainers[0]
    for tr in trainers[1:]:
        if type(tr) is not type(first):
            raise ConfigError("--seeds_at_once packs seeds of one method only")
        a, b = first.config.to_dict(), tr.config.to_dict()
        a.pop("seed"), b.pop("seed")
        if a != b:
            diff = sorted(k for k in a if a[k] != b.get(k))
            raise ConfigError(f"--seeds_at_once packs seeds of one setting only (differs: "
                              f"{', '.join(diff)})")
    why = unpackable(first.config)
    if why:
        raise ConfigError(why)
    if first.replicas > 1:
        raise ConfigError(f"--seeds_at_once packs seeds on one device, not over the "
                          f"{first.replicas} replicas of the strategy the trainers were built "
                          "with")


def _network_variables(tr: Trainer) -> list:
    """Every Keras variable of the trainer's networks, live ones and frozen copies, in a
    fixed order (the order in which they were built: the same for every seed)."""
    seen: set[int] = set()
    out = []
    for part in tr.checkpoint_parts().values():
        if isinstance(part, keras.layers.Layer):
            for v in part.variables:
                if id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
    return out


def _constants_of(tr: Trainer) -> list[tuple[object, str, object]]:
    """The tensor constants the networks hold as attributes (``(layer, name, value)``; a
    value is a tensor or a list of tensors): masks and tables built from the seed."""
    out = []
    seen: set[int] = set()
    for part in tr.checkpoint_parts().values():
        if not isinstance(part, keras.layers.Layer):
            continue
        for layer in part._flatten_layers(include_self=True, recursive=True):
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            for name, value in sorted(vars(layer).items()):
                if isinstance(value, tf.Tensor) or (
                        isinstance(value, (list, tuple)) and value
                        and all(isinstance(v, tf.Tensor) for v in value)):
                    out.append((layer, name, value))
    return out


def _seed_constants(trainers: list[Trainer]) -> list[tuple[object, str, int | None, tf.Tensor]]:
    """The network constants that differ between the seeds: ``(first seed's layer,
    attribute, index in the attribute's list or None, the tensor stacked over the seeds)``."""
    per_seed = [_constants_of(tr) for tr in trainers]
    if len({len(c) for c in per_seed}) != 1:
        raise ValueError("the seeds' networks hold different constants")
    out = []
    for j, (layer, name, value) in enumerate(per_seed[0]):
        as_list = isinstance(value, (list, tuple))
        items = [list(c[j][2]) if as_list else [c[j][2]] for c in per_seed]
        for i in range(len(items[0])):
            seeds = [it[i] for it in items]
            if not all(np.array_equal(seeds[0].numpy(), s.numpy()) for s in seeds[1:]):
                out.append((layer, name, i if as_list else None, tf.stack(seeds)))
    return out


@contextlib.contextmanager
def _swapped(entries, values):
    """While tracing: the first seed's differing constants (``_seed_constants``) replaced
    by one seed's ``values``."""
    saved: dict[tuple[int, str], tuple[object, str, object]] = {}
    try:
        for (layer, name, index, _), value in zip(entries, values):
            key = (id(layer), name)
            if key not in saved:
                saved[key] = (layer, name, getattr(layer, name))
            if index is not None:
                value = [value if i == index else v for i, v in enumerate(getattr(layer, name))]
            # object.__setattr__: a swap for one trace, not something Keras should track
            object.__setattr__(layer, name, value)
        yield
    finally:
        for layer, name, old in saved.values():
            object.__setattr__(layer, name, old)


def _stack(items):
    """A list of equal structures -> one structure of tensors stacked on a new first axis."""
    return tf.nest.map_structure(lambda *v: tf.stack(v), *items)


class SeedPack:
    """Trainers of one setting that differ only in the seed, trained in lockstep."""

    def __init__(self, trainers: list[Trainer]):
        if not trainers:
            raise ValueError("a SeedPack needs at least one trainer")
        self.trainers = list(trainers)
        self._loss_names: dict[tuple, list[str]] = {}
        # one seed steps as its trainer; a pack's step runs without XLA (the module's
        # docstring), its update with XLA unless --nojit_compile
        first = self.trainers[0]
        self.xla_update = first.xla_update if len(self.trainers) == 1 else xla_update(
            first.config.jit_compile, False, first.distributed)
        if len(self.trainers) > 1:
            check_packable(self.trainers)
            self._vars = [_network_variables(tr) for tr in self.trainers]
            shapes = [[tuple(v.shape) for v in vs] for vs in self._vars]
            if any(s != shapes[0] for s in shapes):
                raise ValueError("the seeds' networks differ in their variables")
            self._constants = _seed_constants(self.trainers)
            # no XLA: see the module's docstring
            self._steps_fn = tf.function(self._steps, reduce_retracing=True, autograph=False)

    @property
    def seeds(self) -> list[int]:
        """The seeds, in the pack's order."""
        return [tr.config.seed for tr in self.trainers]

    # -- the task loop ---------------------------------------------------------------
    def fit(self, until: int | None = None) -> list:
        """Train every seed on the tasks not yet learned (up to ``until``), evaluating
        after each, in the one task loop (``loop.fit``) over the packed step: the
        histories. A pack does not resume part-way through a task (each seed's export
        resumes alone)."""
        if len(self.trainers) == 1:
            return [self.trainers[0].fit(until)]
        return loop.fit(self.trainers, self.train_task, until)

    def train_task(self, runs: list[TaskRun], at: TaskProgress | None = None) -> list[dict]:
        """Every seed's ``loop.task_loop`` driven by one step over all of them: each
        seed's mean losses."""
        trs = self.trainers
        if len(trs) == 1:
            return [trs[0].train_task(runs[0], at)]
        runs = [r._replace(data=pad_samples(r.data)) for r in runs]
        names = self.loss_names(runs, trs[0].plan_for_iteration(runs[0].plan, 0))
        # a Ctrl-C lands once every seed has had its chunk (and its checkpoint callbacks):
        # the seeds stop at one step, each resumable from its own progress
        loops = [loop.task_loop(tr, run, names, interruptible=False)
                 for tr, run in zip(trs, runs)]
        requests = [next(steps) for steps in loops]
        means: list[dict | None] = [None] * len(trs)
        while requests:
            plan, k = requests[0]
            if any(r != requests[0] for r in requests):
                raise RuntimeError("the seeds of a pack went out of step")
            rows = self.run_steps(runs, k, plan)
            requests = []
            for s, (seed_loop, tr) in enumerate(zip(loops, trs)):
                try:
                    requests.append(seed_loop.send(rows[s]))
                except StopIteration as done:
                    means[s] = done.value
                except NonFiniteLoss as e:
                    raise NonFiniteLoss(f"seed {tr.config.seed}: {e}") from None
            interrupts.raise_if_requested()
        return means

    # -- the packed step -------------------------------------------------------------
    def loss_names(self, runs: list[TaskRun], plan: Plan) -> list[str]:
        """The terms the step reports (``Trainer.loss_names``), found by tracing it."""
        key = (plan, tuple(tf.nest.map_structure(lambda v: tuple(v.shape),
                                                 [(r.data, r.ctx) for r in runs])))
        if key not in self._loss_names:
            self.size_draw_caches(runs, plan)
            fn = self._steps_fn.get_concrete_function(
                tuple(r.data for r in runs), tuple(r.ctx for r in runs), plan,
                tf.constant(1, tf.int32))
            self._loss_names[key] = list(fn.structured_outputs[0])
        return self._loss_names[key]

    def size_draw_caches(self, runs: list[TaskRun], plan: Plan) -> None:
        for tr, run in zip(self.trainers, runs):
            tr.size_draw_cache(run.data, plan)

    def run_steps(self, runs: list[TaskRun], k: int, plan: Plan) -> list[np.ndarray]:
        """Up to ``k`` iterations of every seed in one call: per seed, the losses of the
        iterations run ``[count, terms]`` (``loss_names``' order); all seeds stop after an
        iteration in which any seed's loss is not finite."""
        self.size_draw_caches(runs, plan)
        terms, count = self._steps_fn(tuple(r.data for r in runs), tuple(r.ctx for r in runs),
                                      plan, tf.constant(k, tf.int32))
        table = np.stack([terms[nm].numpy() for nm in self.loss_names(runs, plan)], axis=1)
        return [table[:int(count), :, s] for s in range(len(self.trainers))]

    def _steps(self, datas, ctxs, plan: Plan, n: tf.Tensor):
        """``Trainer._steps`` for all seeds: per term, ``[steps_per_call, K]``."""
        return chunk_loop(lambda: self._step(datas, ctxs, plan),
                          self.trainers[0].steps_per_call, n)

    def _step(self, datas, ctxs, plan: Plan) -> dict[str, tf.Tensor]:
        trs = self.trainers
        first = trs[0]
        batches, owns = [], []
        for tr, data, ctx in zip(trs, datas, ctxs):
            # each seed's own draws, in its separate run's order (``Trainer._step``)
            idx = tr.draw_batch(data, ctx, plan)
            owns.append(tr.draw(ctx, plan))
            batches.append(Batch(x=tr.preprocess(tf.gather(data.x, idx)),
                                 y=tf.gather(data.y, idx), tid=tf.gather(data.tid, idx)))
        # vectorized_map takes no None: a method without draws of its own passes ()
        own = () if owns[0] is None else _stack(owns)
        groups = [{name: g for name, g in tr.optim_groups().items()
                   if plan.groups is None or name in plan.groups} for tr in trs]
        entries = self._constants

        def one_seed(args):
            batch, own_s, ctx, weights, consts = args
            own_s = None if owns[0] is None else own_s
            with keras.StatelessScope(state_mapping=list(zip(self._vars[0], weights))), \
                    _swapped(entries, consts):
                replay = first.replay_batch(batch, own_s, ctx, plan) if plan.replay else None
                return first.losses(batch, replay, own_s, ctx, plan)

        with tf.GradientTape(persistent=len(groups[0]) > 1) as tape:
            weights = [tf.stack([tf.convert_to_tensor(v) for v in vs]) for vs in zip(*self._vars)]
            elems = (_stack(batches), own, _stack(list(ctxs)), weights,
                     [stacked for *_, stacked in entries])
            losses = tf.vectorized_map(one_seed, elems, fallback_to_while_loop=False)
            for j, reg in enumerate(first.regularizers):
                pen = tf.stack([tr.regularizers[j].penalty() for tr in trs])
                losses[f"penalty_{reg.name}"] = pen
                losses["total"] = losses["total"] + pen
            # seeds share no weight: the gradient of the sum is each seed's own gradient
            sums = {g.loss: tf.reduce_sum(losses[g.loss]) for g in groups[0].values()}
        # each seed's gradients, group by group: one gradient call per group for all seeds
        mine: list[list[list[tf.Tensor]]] = [[] for _ in trs]
        for name, group in groups[0].items():
            per_seed = [g[name].variables for g in groups]
            grads = dense_gradients(tape.gradient(sums[group.loss],
                                                  [v for vs in per_seed for v in vs]))
            at = 0
            for i, vs in enumerate(per_seed):
                mine[i].append(grads[at:at + len(vs)])
                at += len(vs)

        def update():   # every seed's optimisers (and regularisers), one cluster under XLA
            for tr, g, gr in zip(trs, groups, mine):
                apply_updates(tr.regularizers, list(g.values()), gr)

        run_update(update, self.xla_update)
        return {k: losses[k] for k in ["total", *(k for k in losses if k != "total")]}
