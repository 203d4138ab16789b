"""Step 2 of 2 of converting the authors' pre-trained conv trunk: their arrays -> our Keras trunk.

Reads the ``.npz`` that ``tools/authors_trunk_export.py`` wrote (PyTorch is not needed
here), puts the arrays into ``bir_keras.models.layers.conv_trunk()`` and writes, in
``--out_dir`` (default ``saved_models/authors_c3_5x16_bn``):

* ``conv_trunk.weights.h5``: the trunk's Keras weights (written to a temporary file, then
  renamed over the target);
* ``check.npz``: the recorded check (8 uint8 images, the normalisation statistics, their
  trunk's features in our feature order) that ``tests/models/test_authors_trunk.py`` reads;
* ``conversion.json``: provenance, the SHA-256 of the weights file written and the check's
  numbers.

Mapping (their ``ConvLayers`` -> ours): ``convLayer{i}.conv.weight`` (PyTorch OIHW) ->
``conv{i}`` kernel (Keras HWIO, ``transpose(2, 3, 1, 0)``; both frameworks compute a
cross-correlation, so no flip), ``.conv.bias`` -> bias; ``convLayer{i}.bn.weight/bias/
running_mean/running_var`` -> ``bn{i}`` gamma/beta/moving_mean/moving_variance (both
epsilon 1e-5). Features: PyTorch flattens NCHW (index c*4 + h*2 + w), Keras NHWC
(index (h*2 + w)*256 + c); the check compares ours with theirs transposed to NHWC.

The check: our trunk (eval mode) on the recorded images must give the recorded features
within ``TOLERANCE`` of their largest magnitude (float32 results of two frameworks differ
by summation order: about 1e-7 relative per sum of up to 1152 products, over 5 layers,
so some 1e-6; a wrong layout or padding gives differences of order 1).

An existing weights file is replaced only if ``conversion.json`` beside it records its
SHA-256 (i.e. this tool wrote it); otherwise the tool refuses.

    python tools/authors_trunk_import.py --npz=authors_c3_5x16_bn.npz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = ROOT / "saved_models" / "authors_c3_5x16_bn"
WEIGHTS = "conv_trunk.weights.h5"
TOLERANCE = 1e-4  # max |ours - theirs| / max |theirs|


class Refused(Exception):
    pass


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def keras_arrays(npz) -> dict[str, list[np.ndarray]]:
    """Our layer name -> its variables in Keras' order, from their PyTorch names."""
    out = {}
    for i in range(1, 6):
        p = f"convLayer{i}"
        out[f"conv{i}"] = [npz[f"{p}.conv.weight"].transpose(2, 3, 1, 0), npz[f"{p}.conv.bias"]]
        if i < 5:
            out[f"bn{i}"] = [npz[f"{p}.bn.{k}"] for k in
                             ("weight", "bias", "running_mean", "running_var")]
    return out


def nchw_to_ours(features_nchw: np.ndarray) -> np.ndarray:
    """(N, 256, 2, 2) PyTorch feature maps -> (N, 1024) in our Flatten's (NHWC) order."""
    return features_nchw.transpose(0, 2, 3, 1).reshape(len(features_nchw), -1)


def build(arrays: dict[str, list[np.ndarray]], padding: str = "torch"):
    from bir_keras.models.layers import conv_trunk

    trunk = conv_trunk(padding=padding)
    names = {layer.name for layer in trunk.layers if layer.weights}
    if names != set(arrays):
        raise Refused(f"layers with weights {sorted(names)} do not match {sorted(arrays)}")
    for name, values in arrays.items():
        layer = trunk.get_layer(name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes != [v.shape for v in values]:
            raise Refused(f"{name}: shapes {shapes} != {[v.shape for v in values]}")
        layer.set_weights([v.astype(np.float32) for v in values])
    return trunk


def features_of(trunk, pixels: np.ndarray, mean, std) -> np.ndarray:
    from bir_keras.data.protocols import normalise_pixels

    x = normalise_pixels(pixels.astype(np.float32), tuple(mean), tuple(std))
    return trunk(x, training=False).numpy()


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict:
    diff = float(np.abs(ours - theirs).max())
    scale = float(np.abs(theirs).max())
    return {"max_abs_diff": diff, "max_abs_feature": scale, "relative": diff / scale}


def check_target(out_dir: Path) -> None:
    """Refuse to replace a weights file that this tool did not write."""
    target, record = out_dir / WEIGHTS, out_dir / "conversion.json"
    if not target.exists():
        return
    written = None
    if record.exists():
        written = json.loads(record.read_text()).get("weights_sha256")
    if written != sha256_of(target):
        raise Refused(f"{target} exists and is not the file this tool wrote (no matching "
                      f"SHA-256 in {record}); move it away first")


def write_atomic(path: Path, write) -> None:
    """``write(tmp_path)`` into a temporary file beside ``path``, then rename it over."""
    suffix = ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--npz", required=True, help="what tools/authors_trunk_export.py wrote")
    ap.add_argument("--out_dir", default=str(DEFAULT_OUT_DIR))
    args = ap.parse_args(argv)

    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        check_target(out_dir)
    except Refused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 2

    with np.load(args.npz) as f:
        npz = {k: f[k] for k in f.files}
    provenance = json.loads(str(npz["provenance"]))
    arrays = keras_arrays(npz)
    pixels, mean, std = npz["check_pixels"], npz["check_mean"], npz["check_std"]
    theirs = nchw_to_ours(npz["check_features_nchw"])

    trunk = build(arrays)
    check = compare(features_of(trunk, pixels, mean, std), theirs)
    # the same weights with Keras' "same" padding (what the trunk had before): not a match
    same = compare(features_of(build(arrays, "same"), pixels, mean, std), theirs)
    if not check["relative"] <= TOLERANCE:
        print(f"refused: our trunk's features differ from theirs by {check}", file=sys.stderr)
        return 1

    target = out_dir / WEIGHTS
    write_atomic(target, trunk.save_weights)
    # the file as Keras reads it back gives the same features
    from bir_keras.models.layers import conv_trunk

    reread = conv_trunk()
    reread.load_weights(str(target))
    check_reread = compare(features_of(reread, pixels, mean, std), theirs)

    write_atomic(out_dir / "check.npz", lambda p: np.savez_compressed(
        p, pixels=pixels, mean=mean, std=std, features=theirs.astype(np.float32),
        tolerance=np.float32(TOLERANCE)))
    record = {"source": provenance, "weights": WEIGHTS, "weights_sha256": sha256_of(target),
              "tolerance_relative": TOLERANCE, "check": check_reread,
              "check_with_keras_same_padding": same}
    write_atomic(out_dir / "conversion.json",
                 lambda p: Path(p).write_text(json.dumps(record, indent=2) + "\n"))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
