"""How good a pre-trained conv trunk's features are: a frozen-trunk probe on CIFAR-10.

    python -m benchmarks.trunk_probe --conv_weights=authors --epochs=5 \\
        --data_dir=/work/shared/data/cifar10-jpg.zip

The trunk (``bir_keras.models.layers.conv_trunk``, weights from ``--conv_weights``: a file
or a shipped name, ``authors`` or ``ours``) is frozen; the features of the 50,000 training
and 10,000 test images (``x / 255``, then per channel ``(x - mean) / std`` with the CIFAR-10
statistics, no augmentation, batch-norm in inference mode) are computed once; an FC head
1024 -> 2000 -> 2000 -> 10 (ReLU, PyTorch's default initialisation) is trained on the
training features with Adam (lr 1e-4, betas 0.9/0.999), batch 256, shuffled each epoch,
for ``--epochs``; printed as JSON: the test accuracy after each epoch and the times.
``--padding=same`` builds the trunk with Keras' "same" padding instead of PyTorch's
(``conv_trunk(padding=...)``), as the trunk in ``saved_models/cifar10_conv`` was trained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conv_weights", default="authors",
                    help="a .weights.h5 of the trunk, or 'authors' / 'ours' (default authors)")
    ap.add_argument("--data_dir", required=True, help="CIFAR-10 (e.g. cifar10-jpg.zip)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--padding", choices=("torch", "same"), default="torch")
    args = ap.parse_args(argv)

    from bir_keras.weightsfile import check_weights_file, resolve_conv_weights

    check_weights_file(args.conv_weights, "--conv_weights")  # before TensorFlow loads
    import keras
    import tensorflow as tf

    from bir_keras.data.protocols import CIFAR_MEAN, CIFAR_STD, normalise_pixels
    from bir_keras.data.sources import load_dataset
    from bir_keras.models.layers import conv_trunk, torch_uniform_init

    keras.utils.set_random_seed(args.seed)
    t0 = time.time()
    ds = load_dataset("cifar10", args.data_dir)
    trunk = conv_trunk(padding=args.padding)
    trunk.load_weights(str(resolve_conv_weights(args.conv_weights)))
    trunk.trainable = False

    @tf.function
    def feats(x):
        return trunk(normalise_pixels(tf.cast(x, tf.float32), CIFAR_MEAN["cifar10"],
                                      CIFAR_STD["cifar10"]), training=False)

    def features(x: np.ndarray) -> np.ndarray:
        return np.concatenate([feats(x[s:s + 1000]).numpy() for s in range(0, len(x), 1000)])

    f_train, f_test = features(ds.x_train), features(ds.x_test)
    t_features = time.time() - t0

    head = keras.Sequential([keras.layers.Input((f_train.shape[1],)),
                             keras.layers.Dense(2000, activation="relu"),
                             keras.layers.Dense(2000, activation="relu"),
                             keras.layers.Dense(10)])
    torch_uniform_init(head, args.seed)
    head.compile(optimizer=keras.optimizers.Adam(args.lr, beta_1=0.9, beta_2=0.999,
                                                 epsilon=1e-8),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])
    accuracies = []
    t1 = time.time()
    for _ in range(args.epochs):
        head.fit(f_train, ds.y_train, batch_size=args.batch, epochs=1, shuffle=True, verbose=0)
        accuracies.append(float(head.evaluate(f_test, ds.y_test, batch_size=1000,
                                              verbose=0)[1]))
    print(json.dumps({
        "conv_weights": args.conv_weights,
        "file": str(resolve_conv_weights(args.conv_weights)),
        "padding": args.padding, "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
        "seed": args.seed, "train_images": len(f_train), "test_images": len(f_test),
        "test_accuracy": accuracies[-1], "test_accuracy_per_epoch": accuracies,
        "features_s": round(t_features, 1), "head_s": round(time.time() - t1, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
