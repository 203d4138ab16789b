"""How the compiled step executes: whether XLA compiles it (``step_xla``) or its update
alone (``xla_update``), the optimisers' update with the regularisers, Adam as the authors'
code has it, the dtype policy the networks are built under, a replica's slice of globally
drawn numbers, padding a task's data to a stable shape, and the loop of iterations inside
one compiled call."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import keras
import tensorflow as tf

from bir_keras.strategies.records import OptimGroup, TaskData
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


def step_xla(asked: bool | None, replicas: int, conv_step: bool, precision: str) -> bool:
    """Whether the step is compiled with XLA (``asked`` None = auto): the one XLA policy
    (``xla_update`` says whether the update alone is, when the step is not).

    XLA compiles the step for one device; with several replicas (MirroredStrategy over
    devices, MultiWorkerMirroredStrategy) the step reads variables on other devices and
    all-reduces, which the compiled cluster cannot: there it runs without XLA. Auto is on
    for one device (benchmarks.speed: 25-60% less time per iteration for every method on
    split MNIST, within 5% on permuted MNIST) except for steps with convolutions
    (``conv_step``) on a CPU, where XLA's CPU convolutions were 25x slower than
    TensorFlow's, and except bfloat16 on a CPU, where bfloat16 pays off at all: BI-R
    permuted MNIST (2x2000 units), ms per iteration without / with replay, 57 / 98 without
    XLA against 67 / 141 with it (with 400 units XLA wins, 4.6 / 8.4 against 6.6 / 14.2,
    but float32 with XLA beats both there: 3.7 / 7.9; docs/speed.md)."""
    if replicas > 1:
        return False
    if asked is not None:
        return bool(asked)
    if tf.config.list_logical_devices("GPU"):
        return True
    return not conv_step and precision == "float32"


def xla_update(asked: bool | None, step_xla: bool, distributed: bool) -> bool:
    """Whether a step that runs without XLA (``step_xla`` False) has its update (every
    optimiser's and regulariser's element-wise arithmetic, ``run_update``) compiled by XLA:
    under TensorFlow's default strategy (not ``distributed``: a MirroredStrategy, even over
    one device, applies the update through ``merge_call``, which a nested function cannot),
    unless ``--nojit_compile`` (``asked`` False) asked for no XLA at all. Run op by op,
    Adam's update is a dozen passes over every weight; XLA fuses them into one. Measured on
    a 2-core Xeon with AMX (2026-12-04, docs/speed.md): BI-R in mixed_bfloat16, ms per
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


def local_slice(x: tf.Tensor | None) -> tf.Tensor | None:
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
