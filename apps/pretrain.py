"""Pre-train the CIFAR conv layers (method.md 4.4) on CIFAR-10.

    python -m apps.pretrain --data_dir=/path/to/cifar10 --epochs=100

The 5 conv layers of ``bir_keras.models.layers.conv_trunk()`` (1024 features) are trained
with a classifier head (the paper's code: FC 2000-2000 + 10 softmax units; ``--head_units``
and ``--head_layers`` change it), Adam (lr 1e-4, betas 0.9/0.999), batch 256, random crop
(zero padding of 4 pixels, crop 32x32) and horizontal flips done in-graph, inputs
normalised per channel with the CIFAR-10 mean and std (x / 255, then (x - mean) / std: the
protocols' ``normalise_pixels``). Only the conv trunk is saved (``trunk.save_weights``), to
``--out``, after every epoch (atomically), next to a JSON record (``conv_trunk.json``:
epochs, test accuracy, seconds, command, and the SHA-256 of the weights it describes).
apps.train takes it as ``--conv_weights=PATH``. The training loop and the rules of what may
be written are the library's (``bir_keras.pretrain``, callable from Python); this app maps
its flags onto ``bir_keras.pretrain.PretrainConfig``.

``--out`` defaults to ``saved_models/pretrained_conv/conv_trunk.weights.h5`` (in the working
directory). The shipped weights in ``saved_models/authors_c3_5x16_bn/`` (the authors' trunk,
what CIFAR runs load by default) and ``saved_models/cifar10_conv/`` (``--conv_weights=ours``)
are never an output. An existing ``--out`` (or its record) is replaced only with
``--overwrite``, and only if apps.pretrain wrote it: the record beside it names this
program and holds the weights' digest; any other file is never replaced.

Exit codes: 0 done, 2 refused input (one ``error:`` line, before the data or TensorFlow
load: also a numeric flag out of its range), 1 out of memory or a diverged run (a loss or
weights that are not finite: one ``error:`` line naming ``--lr``; nothing of that epoch is
written), 130 Ctrl-C (the weights and record hold the last whole epoch).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from absl import flags

from bir_keras.pretrain import DEFAULT_OUT, PretrainConfig, check_out, record_path

FLAGS = flags.FLAGS
_D = PretrainConfig()

flags.DEFINE_string("data_dir", None, "CIFAR-10 data: cifar-10-batches-py/, an image folder or "
                    "its .zip; default: TFDS (downloads where the internet is reachable)")
flags.DEFINE_integer("epochs", _D.epochs, f"training epochs over CIFAR-10 (default {_D.epochs}, "
                     "the paper's)")
flags.DEFINE_integer("batch", _D.batch, f"batch size (default {_D.batch})")
flags.DEFINE_float("lr", _D.lr, f"Adam learning rate (default {_D.lr:g})")
flags.DEFINE_integer("seed", _D.seed, "random seed: initialisation, shuffling, augmentation "
                     f"(default {_D.seed})")
flags.DEFINE_string("out", DEFAULT_OUT, "where the conv trunk's weights go (must end with "
                    ".weights.h5; default saved_models/pretrained_conv/conv_trunk.weights.h5 "
                    "in the working directory, never the shipped saved_models/authors_c3_5x16_bn/ "
                    "or saved_models/cifar10_conv/ that --conv_weights=authors|ours load); "
                    "the JSON record is written next to it "
                    "as conv_trunk.json; apps.train uses them with --conv_weights=PATH")
flags.DEFINE_bool("overwrite", False, "replace an existing --out (and its record) that "
                  "apps.pretrain wrote; any other file is never replaced (default false)",
                  allow_override=True)
flags.DEFINE_integer("limit", None, "use only the first N training images, taken in a fixed "
                     "shuffled order so that all classes appear (tests, timing)")
flags.DEFINE_integer("test_limit", None, "evaluate on only the first N test images")
flags.DEFINE_integer("head_units", _D.head_units, "units of each hidden FC layer of the head "
                     f"(default {_D.head_units})")
flags.DEFINE_integer("head_layers", _D.head_layers, "hidden FC layers of the head (default "
                     f"{_D.head_layers}; 0 = linear head)")
flags.DEFINE_bool("augment", _D.augment, "random crop (pad 4) + horizontal flip (default true)")
flags.DEFINE_bool("deterministic", _D.deterministic, "deterministic ops (same seed, same numbers)")


def config_from_flags() -> PretrainConfig:
    return PretrainConfig(**{f: getattr(FLAGS, f) for f in PretrainConfig.__dataclass_fields__})


def main(argv: list[str]) -> int:
    """Parse flags, train, report test accuracy per epoch, save the trunk and the record.

    Exit codes: ``apps.common.run_work``'s (see the module's docstring)."""
    del argv
    from apps.common import TrainingFailed, run_work
    from bir_keras.pretrain import PretrainDiverged

    command = "python -m apps.pretrain " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    written: dict = {}  # the last epoch this run wrote

    def interrupted(e: BaseException) -> str:
        out = Path(FLAGS.out)
        done = written.get("epochs")
        return (f"interrupted; {out} and {record_path(out).name} hold epoch {done}" if done
                else "interrupted before the first epoch ended; nothing written")

    return run_work(lambda: _main(command, written),
                    failed=(TrainingFailed, PretrainDiverged), interrupted=interrupted)


def _main(command: str, written: dict) -> None:
    from apps.common import out_of_memory_names
    from bir_keras import interrupts, rundirs

    out, config = Path(FLAGS.out), config_from_flags()
    config.check()
    check_out(out, FLAGS.overwrite)
    with rundirs.claim(out, "--out"), rundirs.claim(record_path(out), "--out"):
        # one writer per path: a second apps.pretrain on these files is refused now
        check_out(out, FLAGS.overwrite)
        from bir_keras.data.sources import load_dataset
        from bir_keras.pretrain import pretrain

        data = load_dataset("cifar10", FLAGS.data_dir)

        def on_epoch(e: dict) -> None:
            written["epochs"] = e["epoch"]
            print(f"epoch {e['epoch']}/{config.epochs}: train loss {e['train_loss']:.4f}, train "
                  f"accuracy {e['train_accuracy']:.4f}, test accuracy {e['test_accuracy']:.4f} "
                  f"({e['seconds']:.1f}s)", flush=True)

        with out_of_memory_names("--batch (or --head_units)"), interrupts.deferred():
            history = pretrain(data, out, config, overwrite=FLAGS.overwrite, command=command,
                               on_epoch=on_epoch, report=lambda line: print(line, flush=True))
    import json

    print(json.dumps({"test_accuracy": history[-1]["test_accuracy"], "epochs": config.epochs,
                      "seconds": round(sum(e["seconds"] for e in history), 1),
                      "weights": str(out), "record": str(record_path(out))}), flush=True)


if __name__ == "__main__":
    from apps.common import run_app

    run_app(main)
