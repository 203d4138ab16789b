"""Real-valued feature vectors (an embedding from your own backbone) as a task stream:
BI-R against plain fine-tuning over two seeds, Class-IL (a minute or two on a CPU).

    python examples/feature_stream.py [ITERATIONS]

The features here are made up: 12 classes of 64-dimensional vectors around their class
means, on a scale of their own (the run standardises them with the training statistics,
and its SavedModel does the same to what it classifies).
"""

import sys

import numpy as np

import bir_keras as bk

iters = int(sys.argv[1]) if len(sys.argv) > 1 else 300
rng = np.random.RandomState(0)
means = rng.randn(12, 64) * 0.35
x = np.concatenate([m + rng.randn(300, 64) for m in means]).astype(np.float32) * 40 + 7
y = np.repeat([f"class {c}" for c in range(12)], 300)
test = np.arange(len(y)) % 6 == 0

stream = bk.TaskStream(x[~test], y[~test], x[test], y[test])
config = bk.Config(experiment="custom", scenario="class", classes_per_task=4,
                   iters=iters, batch=64, fc_units=100,
                   jit_compile=False)   # networks this small: XLA's compile costs more than it saves
result = bk.compare(["none", "bir"], seeds=[0, 1], config=config, data=stream,
                    output_dir="runs/feature_stream", overwrite=True)
print(result.table())
