"""BI-R on your own images, given as NumPy arrays: learn five tasks of two digits each,
then classify new images and draw replay samples of a class (about a minute on a CPU).

    python examples/numpy_stream.py [ITERATIONS]
"""

import sys

import numpy as np
from sklearn.datasets import load_digits

import bir_keras as bk

iters = int(sys.argv[1]) if len(sys.argv) > 1 else 500
digits = load_digits()                                           # 1797 8x8 images, 0..16
x = np.round(digits.images * 255 / 16).astype(np.uint8)           # uint8 pixels: images
y = digits.target
test = np.arange(len(y)) % 5 == 0                                # every fifth image to test

stream = bk.TaskStream(x[~test], y[~test], x[test], y[test],
                       class_names=[f"digit {d}" for d in range(10)])
config = bk.Config(experiment="custom", scenario="class", method="bir",
                   classes_per_task=2, iters=iters, batch=64, fc_units=100,
                   jit_compile=False)   # networks this small: XLA's compile costs more than it saves
history = bk.train(config, stream, output_dir="runs/numpy_stream",
                   export_dir="saved_models/numpy_stream", overwrite=True)
print("average accuracy after each task:", np.round(history.history["average_accuracy"], 3))

run = bk.load(history.export_dir)
show = np.flatnonzero(test)[::45]                                 # 8 test images
print("predicted:", list(run.classify(x[show])["class_name"]))
print("true:     ", [f"digit {d}" for d in y[show]])
samples = run.sample(["digit 3"] * 4)["x"]                        # 4 generated 8x8 images
print("replay samples of digit 3:", samples.shape)
