"""Step 1 of 2 of converting the authors' pre-trained conv trunk (PyTorch) to our Keras trunk.

Run with a Python that has PyTorch and numpy (never needed by the package or its tests)::

    /work/venv-torch/bin/python tools/authors_trunk_export.py \\
        --state_dict=C3-5x16-bn --commit=<commit of the file> --out=authors_c3_5x16_bn.npz

``--state_dict`` is ``store/models/C3-5x16-bn`` of github.com/GMvandeVen/brain-inspired-replay
(a ``torch.save({'state': convE.state_dict()})`` of their ``ConvLayers(depth=5,
start_channels=16, batch_norm=True, output="none")``). This script rebuilds that trunk
in PyTorch from its layer order as their ``models/conv/nets.py`` and ``models/conv/layers.py``
define it (``conv_layer``: ``nn.Conv2d(kernel_size=3, padding=1, stride)`` -> ``BatchNorm2d``
-> ReLU, strides 1-2-2-2-2, the fifth layer a bare conv: no batch-norm, no ReLU), loads
the state dict strictly into it, and writes one ``.npz`` with

* every parameter and batch-norm buffer as a float32 array under its PyTorch name
  (``convLayer1.conv.weight`` ... ``convLayer5.conv.bias``), unchanged (conv kernels in
  PyTorch's OIHW layout);
* the recorded check: ``check_pixels`` (8 deterministic 32x32x3 uint8 images, NHWC),
  ``check_mean``/``check_std`` (the CIFAR-10 statistics their code normalises with) and
  ``check_features_nchw``, their trunk's output on those images, normalised as
  ``x / 255`` then per channel ``(x - mean) / std``, in eval mode (batch-norm's running
  statistics), shape (8, 256, 2, 2);
* ``provenance``: a JSON string (repository, commit, path, SHA-256 of the state-dict file,
  torch version).

``tools/authors_trunk_import.py`` (no PyTorch) turns it into a Keras ``.weights.h5``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

import numpy as np

REPOSITORY = "https://github.com/GMvandeVen/brain-inspired-replay"
PATH_IN_REPOSITORY = "store/models/C3-5x16-bn"
CHANNELS = (3, 16, 32, 64, 128, 256)
STRIDES = (1, 2, 2, 2, 2)
# their data/available.py, 'cifar10_norm' (the trunk was pre-trained on CIFAR-10)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CHECK_IMAGES = 8
CHECK_SEED = 2024


def check_pixels() -> np.ndarray:
    """8 fixed uint8 images (NHWC): 4 of independent uniform pixels and 4 smooth ones
    (4x4 random colour blocks upsampled to 32x32), from a seeded numpy generator."""
    rng = np.random.default_rng(CHECK_SEED)
    noise = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    blocks = rng.integers(0, 256, size=(4, 4, 4, 3), dtype=np.uint8)
    smooth = blocks.repeat(8, axis=1).repeat(8, axis=2)
    return np.concatenate([noise, smooth])


def normalise(pixels: np.ndarray) -> np.ndarray:
    """float32 ``x / 255`` then per channel ``(x - mean) / std`` (NHWC), as
    bir_keras.data.protocols.normalise_pixels does."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(CIFAR10_MEAN, np.float32)) / np.asarray(CIFAR10_STD, np.float32)


def build_trunk(torch):
    """Their ConvLayers(depth=5, start_channels=16, batch_norm=True, output="none") with
    the same module names, so that their state dict loads strictly."""
    nn = torch.nn

    class ConvLayer(nn.Module):
        def __init__(self, cin, cout, stride, last):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=True)
            self.last = last
            if not last:
                self.bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            x = self.conv(x)
            return x if self.last else torch.relu(self.bn(x))

    class Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            for i, stride in enumerate(STRIDES):
                setattr(self, f"convLayer{i + 1}",
                        ConvLayer(CHANNELS[i], CHANNELS[i + 1], stride, last=i == len(STRIDES) - 1))

        def forward(self, x):
            for i in range(len(STRIDES)):
                x = getattr(self, f"convLayer{i + 1}")(x)
            return x

    return Trunk()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state_dict", required=True, help="their store/models/C3-5x16-bn")
    ap.add_argument("--commit", required=True, help="the repository commit the file comes from")
    ap.add_argument("--out", required=True, help="the .npz to write")
    args = ap.parse_args(argv)

    import torch

    with open(args.state_dict, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    checkpoint = torch.load(args.state_dict, map_location="cpu", weights_only=True)
    state = checkpoint["state"]
    trunk = build_trunk(torch)
    trunk.load_state_dict(state, strict=True)  # every name and shape must match
    trunk.eval()

    pixels = check_pixels()
    x = torch.from_numpy(normalise(pixels).transpose(0, 3, 1, 2).copy())  # NHWC -> NCHW
    with torch.no_grad():
        features = trunk(x).numpy().astype(np.float32)
    assert features.shape == (CHECK_IMAGES, 256, 2, 2), features.shape

    arrays = {name: t.detach().cpu().numpy().astype(np.float32)
              for name, t in state.items() if not name.endswith("num_batches_tracked")}
    provenance = {
        "repository": REPOSITORY,
        "commit": args.commit,
        "path": PATH_IN_REPOSITORY,
        "sha256": sha256,
        "licence": "MIT (Copyright (c) 2020 Gido van de Ven)",
        "torch": torch.__version__,
        "module": "ConvLayers(depth=5, start_channels=16, batch_norm=True, output='none')",
        "check": {"images": CHECK_IMAGES, "seed": CHECK_SEED, "mean": CIFAR10_MEAN,
                  "std": CIFAR10_STD, "mode": "eval"},
        "num_batches_tracked": {name[:-len(".num_batches_tracked")]: int(t)
                                for name, t in state.items()
                                if name.endswith("num_batches_tracked")},
    }
    out = os.path.abspath(args.out)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=os.path.dirname(out))
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays, check_pixels=pixels,
                            check_mean=np.asarray(CIFAR10_MEAN, np.float32),
                            check_std=np.asarray(CIFAR10_STD, np.float32),
                            check_features_nchw=features,
                            provenance=np.asarray(json.dumps(provenance)))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(json.dumps({"out": out, "arrays": len(arrays), "sha256": sha256,
                      "features_abs_max": float(np.abs(features).max())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
