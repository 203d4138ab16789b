"""Train one continual-learning experiment.

    python -m apps.train --flagfile=apps/configs/split_mnist_class_bir.cfg --data_dir=DIR

Writes results.json, accuracy.png and tensorboard/ into --output_dir, and the SavedModel,
checkpoint and run.json into --export_dir after every task.
"""

from __future__ import annotations

import contextlib
import json
import os

from absl import flags

from apps import common
from bir_keras import distribute, memory

FLAGS = flags.FLAGS
common.define_train_flags()
flags.adopt_module_key_flags(common)  # --help lists them (absl shows the main module's flags)


def main(argv: list[str]) -> int:
    """Parse flags, run the experiment, print the final average accuracy.

    Exit codes (``common.run_work``): 0 done, 1 training diverged (non-finite loss) or out
    of memory, 2 refused input, 130 interrupted (Ctrl-C; what could be saved is saved)."""
    del argv
    return common.run_work(_main, interrupted=interrupted_line)


def interrupted_line(e: BaseException) -> str:
    """What a Ctrl-C left: ``experiment.RunInterrupted`` (a ``KeyboardInterrupt``) says what
    was saved where; any other Ctrl-C came before training started."""
    msg = str(e) if isinstance(e, KeyboardInterrupt) else ""
    return msg or "interrupted before training started, nothing saved"


def check_flags():
    """Everything the flags alone decide, before TensorFlow or any data loads:
    (config, resolved config, output_dir, export_dir)."""
    from bir_keras import rundirs
    from bir_keras.config import check_intervals, check_seeds_at_once, resolve

    common.check_not_empty(FLAGS, ("output_dir", "export_dir", "resume_from", "data_dir",
                                   "conv_weights", "xla_cache_dir"))
    config = common.config_from_flags(FLAGS)
    resolved = resolve(config)  # every rule about the settings (bir_keras.config.check)
    k = FLAGS.seeds_at_once
    check_seeds_at_once(resolved, k, FLAGS.resume_from)
    check_intervals(FLAGS.progress_every, FLAGS.checkpoint_every)
    name = common.run_name(resolved) if k == 1 else \
        common.run_name(resolved) + f"-{k}seeds"
    out = FLAGS.output_dir or os.path.join("runs", name)
    export_dir = FLAGS.export_dir or str(rundirs.default_export_dir(out))
    common.check_data_dir(FLAGS.data_dir)
    common.check_conv_weights(resolved)
    # your data is read, cut into tasks and checked before TensorFlow loads; the run
    # takes it from here
    stream = common.check_stream(config, resolved, FLAGS.resume_from)
    for o, e in rundirs.seed_dirs(out, export_dir, [resolved.seed + i for i in range(k)]):
        rundirs.check_run_paths(o, e, FLAGS.resume_from, FLAGS.overwrite)
    if FLAGS.resume_from:
        rundirs.read_resume_record(FLAGS.resume_from, resolved.to_dict())
    common.check_replicas(FLAGS, resolved)
    memory.check_memory(resolved, k, FLAGS.num_logical_cpus if resolved.strategy == "mirrored"
                        else 1)
    return config, resolved, out, export_dir, stream


def _main() -> int:
    config, resolved, out, export_dir, stream = check_flags()
    from bir_keras import rundirs

    with contextlib.ExitStack() as claims:
        def claim_paths() -> None:
            # a second run on these paths is refused now, before the data loads
            seeds = [resolved.seed + i for i in range(FLAGS.seeds_at_once)]
            for o, e in rundirs.seed_dirs(out, export_dir, seeds):
                claims.enter_context(rundirs.claim(o, "--output_dir"))
                claims.enter_context(rundirs.claim(e, "--export_dir"))
                rundirs.check_run_paths(o, e, FLAGS.resume_from, FLAGS.overwrite)

        # one process writes unless several workers train together (only the chief
        # writes, known once TF_CONFIG is read): claim before TensorFlow loads
        if FLAGS.strategy != "multi_worker":
            claim_paths()
        if FLAGS.xla_cache_dir:
            # before TensorFlow loads (it reads TF_XLA_FLAGS once)
            from bir_keras import xla_cache

            claims.enter_context(xla_cache.enabled(FLAGS.xla_cache_dir))
        strategy, is_chief = distribute.make_strategy(FLAGS.strategy, FLAGS.num_logical_cpus)
        if FLAGS.strategy == "multi_worker" and is_chief:
            claim_paths()
        hint = memory.memory_estimate(resolved)[1]
        rec, setup = _train(config, out, export_dir, strategy, is_chief, hint, stream)
    # one line per seed
    recs = rec if isinstance(rec, list) else [rec]
    for r, (o, _) in zip(recs, rundirs.seed_dirs(out, export_dir, [x["flags"]["seed"] for x in recs])):
        c = r["flags"]
        print(json.dumps({"final_average_accuracy": r.get("final_average_accuracy"),
                          "output_dir": o, "export_dir": r["export_dir"],
                          "method": r["method"], "resume_from": r["resume_from"],
                          "flags": {k: c[k] for k in ("experiment", "scenario", "method",
                                                      "replay", "seed")}}))
    return common.EXIT_OK


def _train(config, out: str, export_dir: str, strategy, is_chief: bool, hint: str, stream):
    import tensorflow as tf

    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    from bir_keras import experiment
    from bir_keras.strategies.records import NonFiniteLoss

    with common.out_of_memory_names(hint):
        # one seed: its data loaded here; several: each seed's inside ``run``
        setup = experiment.prepare(config, stream, resume_from=FLAGS.resume_from) \
            if FLAGS.seeds_at_once == 1 else None
        try:
            rec = experiment.run(setup.config if setup else config, out, export_dir=export_dir,
                                 resume_from=FLAGS.resume_from, overwrite=FLAGS.overwrite,
                                 strategy=strategy, is_chief=is_chief, setup=setup,
                                 progress_every=FLAGS.progress_every,
                                 checkpoint_every=FLAGS.checkpoint_every,
                                 seeds_at_once=FLAGS.seeds_at_once, data=stream)
        except NonFiniteLoss as e:
            raise common.TrainingFailed(str(e)) from None
    return rec, setup


if __name__ == "__main__":
    common.run_app(main)
