"""Your data given as arrays is the paper's experiment when it is the paper's data: split
MNIST from the IDX files as NumPy arrays, cut into tasks in the class order of ``--seed``,
against ``--experiment=split_mnist --seed=S``, one after the other in this process.

    python -m benchmarks.stream_vs_experiment --data_dir=../shared/data/mnist --seed=12 \
        [--method=bir] [--iters=2000] --out_dir=/tmp/stream_vs_experiment

Prints both accuracy matrices and whether they are equal (bit for bit on one machine).
``--out_dir`` must not exist (both runs' outputs and exports are written under it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stream_vs_experiment",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="MNIST's four IDX files")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--method", default="bir")
    p.add_argument("--iters", type=int, default=None, help="default: the paper's 2000")
    p.add_argument("--out_dir", required=True)
    a = p.parse_args(argv)
    if os.path.lexists(a.out_dir):
        p.error(f"--out_dir={a.out_dir} exists: choose a new path (nothing is replaced)")

    import bir_keras as bk
    from bir_keras.data.protocols import class_order
    from bir_keras.data.sources import load_dataset

    base = dict(scenario="class", method=a.method, seed=a.seed, iters=a.iters)
    paper = bk.train(bk.Config(experiment="split_mnist", data_dir=a.data_dir, **base),
                     output_dir=f"{a.out_dir}/split_mnist", export_dir=f"{a.out_dir}/split_mnist-export")
    ds = load_dataset("mnist", a.data_dir)
    order = class_order("split_mnist", 10, a.seed)
    stream = bk.TaskStream(ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    mine = bk.train(bk.Config(experiment="custom", capacity=5,
                              task_classes=tuple((str(order[i]), str(order[i + 1]))
                                                 for i in range(0, 10, 2)), **base),
                    stream, output_dir=f"{a.out_dir}/arrays", export_dir=f"{a.out_dir}/arrays-export")
    print(json.dumps({"split_mnist": paper.accuracy_matrix, "arrays": mine.accuracy_matrix,
                      "same": paper.accuracy_matrix == mine.accuracy_matrix,
                      "final_average_accuracy": [paper.final_average_accuracy,
                                                 mine.final_average_accuracy]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
