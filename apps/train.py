"""Train one continual-learning experiment.

    python -m apps.train --flagfile=apps/configs/split_mnist_class_bir.cfg --data_dir=DIR

Writes results.json, accuracy.png and tensorboard/ into --output_dir, and the SavedModel,
checkpoint and run.json into --export_dir after every task.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from absl import app, flags, logging

from apps import common

FLAGS = flags.FLAGS
common.define_train_flags()


def main(argv: list[str]) -> int:
    """Parse flags, run the experiment, print the final average accuracy.

    Exit codes: 0 done, 1 training diverged (non-finite loss), 2 refused input,
    130 interrupted (Ctrl-C; what could be saved is saved)."""
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        return _main()
    except BaseException as e:
        from bir_keras.experiment import caused_by_interrupt

        if not caused_by_interrupt(e):
            raise
        # experiment.RunInterrupted says what was saved where; any other Ctrl-C came before
        # training started
        msg = str(e) if isinstance(e, KeyboardInterrupt) else ""
        print(msg or "interrupted before training started, nothing saved", file=sys.stderr,
              flush=True)
        return 130


def _main() -> int:
    try:
        config = common.config_from_flags(FLAGS)
        strategy, is_chief = common.make_strategy(FLAGS.strategy, FLAGS.num_logical_cpus)
        import tensorflow as tf

        if FLAGS.deterministic:
            tf.config.experimental.enable_op_determinism()
        from bir_keras import experiment
        from bir_keras.strategies.base import NonFiniteLoss

        setup = experiment.prepare(config)
        out = FLAGS.output_dir or os.path.join("runs", common.run_name(setup.config))
        try:
            rec = experiment.run(setup.config, out, export_dir=FLAGS.export_dir,
                                 resume_from=FLAGS.resume_from, overwrite=FLAGS.overwrite,
                                 strategy=strategy, is_chief=is_chief, setup=setup)
        except NonFiniteLoss as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    except common.USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"final_average_accuracy": rec.get("final_average_accuracy"),
                      "output_dir": out, "export_dir": rec["export_dir"],
                      "flags": {k: v for k, v in dataclasses.asdict(setup.config).items()
                                if k in ("experiment", "scenario", "replay", "seed")}}))
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
